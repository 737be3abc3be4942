"""An audit's instruction and what comes back, without the database: rendering every item of a
profile revision into one script per platform, reading the JSON document it prints, and comparing
each item's observed value with its desired one (the server compares; read scripts never do).

The document (``FORMAT``), whatever bytes a read script printed::

    {"format": "rmm.profile_audit/1",
     "items": [{"item": "<item id>", "exit_code": 0, "stdout_bytes": 3,
                "stdout": "<base64 of at most cap bytes>", "stderr": "<base64 of at most 512 bytes>"}]}
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from profiles.models import Comparison, ConfigurationItem, ObservationState, ValueType
from rmm.core.text import display_text

FORMAT = "rmm.profile_audit/1"
ENFORCE_FORMAT = "rmm.profile_enforce/1"
SET_TIMEOUT_SECONDS = 600  # an enforcement's set script (a package install may take a while)
# the set script's environment beside its parameters: from the instruction's signed arguments
SET_ENV = 'export RMM_COMPARISON="$2" RMM_DESIRED_VALUE="$4"; '
ABSENT_EXIT = 3  # the read-script convention: the thing is absent
ITEM_TIMEOUT_SECONDS = 30  # each read script, where the endpoint has `timeout`
# Each value (and its stderr) is cut at this many bytes, fewer when there are many items, so that
# the whole document fits a structured result (256 KiB: docs/agent.md) whatever the read scripts
# print: the output kept, as base64, plus about 122 bytes of JSON per item, for up to 500 items.
VALUE_CAP, STDERR_CAP, OUTPUT_BUDGET = 4096, 512, 120_000
INTERPRETERS = {"sh": "sh", "bash": "bash", "python": "python3"}


class AuditOutputError(ValueError):
    """The instruction's output is not an audit document: every item's read is an error."""


@dataclass(frozen=True)
class Rendered:
    interpreter: str
    content: str
    timeout_seconds: int
    privileged: bool


def caps(count: int) -> tuple[int, int]:
    """(value cap, stderr cap) in bytes for a revision of ``count`` items: an eighth of each item's
    share is its stderr's."""
    share = min(VALUE_CAP + STDERR_CAP, OUTPUT_BUDGET // max(count, 1))
    stderr = min(STDERR_CAP, share // 8)
    return share - stderr, stderr


def value_cap(count: int) -> int:
    return caps(count)[0]


def param_env_name(name: str) -> str:
    return f"RMM_PARAM_{name.upper()}"


# --- rendering, one renderer per platform ---------------------------------------------------------


def _prologue(title: str, cap: int, stderr_cap: int) -> list[str]:
    """The start of every profile script: a private work folder removed at exit, ``$limit`` (the
    read's timeout where the endpoint has ``timeout``) and ``emit ID CODE``, which appends one
    entry of the document from the last run's output (``$dir/out``, ``$dir/err``)."""
    return [
        "#!/bin/sh",
        f"# {title} (docs/profiles.md).",
        "set -u",
        "umask 077",
        # relative: the run-as account may not reach its work directory by its absolute path
        'dir=$(mktemp -d ./audit.XXXXXX) || { echo "audit: no work folder" >&2; exit 70; }',
        "trap 'rm -rf \"$dir\"' EXIT",
        _limit("limit", ITEM_TIMEOUT_SECONDS),
        "b64() { base64 | tr -d '\\n'; }",
        "size() { wc -c < \"$1\" | tr -d ' '; }",
        'sep=""',
        "emit() {",
        '  printf \'%s{"item":"%s","exit_code":%s,"stdout_bytes":%s,"stdout":"%s","stderr":"%s"}\' \\',
        f'    "$sep" "$1" "$2" "$(size "$dir/out")" "$(head -c {cap} "$dir/out" | b64)" '
        f'"$(head -c {stderr_cap} "$dir/err" | b64)" >> "$dir/doc"',
        "  sep=,",
        "}",
    ]


def _limit(name: str, seconds: int) -> str:
    return f'{name}=""; if command -v timeout >/dev/null 2>&1; then {name}="timeout {seconds}"; fi'


def _script_file(script, number: int) -> str:
    """The approved script's exact content, written once as ``$dir/s<number>``."""
    return f"printf '%s' {shlex.quote(script.content)} > \"$dir/s{number}\""


def _run(item: ConfigurationItem, script, number: int, *, limit: str = "$limit", env: str = "") -> str:
    """Run one script for one item in a subshell of its own, its parameters exported as
    ``RMM_PARAM_<NAME>`` (single-quoted: no value is ever run), stdin /dev/null, its stdout and
    stderr kept for ``emit``."""
    exports = "".join(
        f"export {param_env_name(name)}={shlex.quote(value)}; " for name, value in sorted(item.parameters.items())
    )
    interpreter = INTERPRETERS.get(script.language, script.language)
    return f'( {exports}{env}exec {limit} {interpreter} "$dir/s{number}" ) </dev/null >"$dir/out" 2>"$dir/err"'


def _finish() -> list[str]:
    return [
        "printf ']}\\n' >> \"$dir/doc\"",
        'if [ -n "${RMM_RESULT_PATH:-}" ]; then cat "$dir/doc" > "$RMM_RESULT_PATH"; else cat "$dir/doc"; fi',
    ]


def render_linux(items: list[ConfigurationItem]) -> Rendered:
    """One POSIX sh script that runs each item's approved read script with its ``RMM_PARAM_*``
    environment (in a subshell of its own, stdin /dev/null), captures stdout, stderr and the exit
    code, and writes the document: to ``$RMM_RESULT_PATH`` when the agent gives one (protocol 2's
    structured result), else to stdout. Every value is base64 in the document, so no byte a read
    script prints can break the JSON; parameters and scripts are single-quoted for the shell."""
    cap, stderr_cap = caps(len(items))
    scripts: dict[str, int] = {}  # read script id -> its file number
    lines = _prologue(f"Configuration audit: {len(items)} item(s), read only", cap, stderr_cap)
    for item in items:
        script = item.config_key.read_script
        if str(script.pk) not in scripts:
            scripts[str(script.pk)] = len(scripts)
            lines.append(_script_file(script, scripts[str(script.pk)]))
    lines.append(f'printf \'{{"format":"{FORMAT}","items":[\' > "$dir/doc"')
    for item in items:
        script = item.config_key.read_script
        lines.append(f"{_run(item, script, scripts[str(script.pk)])}; emit {item.pk} $?")
    lines += _finish()
    return Rendered(
        interpreter="sh",
        content="\n".join(lines) + "\n",
        # every read may take its own timeout, and the whole never more than an hour
        timeout_seconds=min(3600, 60 + ITEM_TIMEOUT_SECONDS * len(items)),
        # unprivileged unless a read script itself was approved as privileged
        privileged=any(item.config_key.read_script.privileged for item in items),
    )


def enforcement_arguments(item: ConfigurationItem) -> list[str]:
    """The enforcement instruction's arguments (signed with it): the item, its comparison, its
    key's value type and its desired value. The script hands the comparison and the desired value
    to the set script; the server judges the re-read by them (:func:`judge_enforcement`)."""
    return [str(item.pk), item.comparison, item.config_key.value_type, item.desired_value]


def render_enforcement_linux(item: ConfigurationItem) -> Rendered:
    """One POSIX sh script for one item: its key's approved set script with the item's
    ``RMM_PARAM_*``, ``RMM_COMPARISON`` and ``RMM_DESIRED_VALUE`` (from the signed arguments,
    :func:`enforcement_arguments`), then its read script afresh, each kept as in an audit. The
    document is an audit document of the one item with the set script's run beside it::

        {"format": "rmm.profile_enforce/1", "set": [{"item": "set", ...}], "items": [{"item": <id>, ...}]}
    """
    key = item.config_key
    cap, stderr_cap = caps(1)
    lines = _prologue(f"Configuration enforcement: {key.name}, its set script then a fresh read", cap, stderr_cap)
    lines += [
        _limit("setlimit", SET_TIMEOUT_SECONDS),
        _script_file(key.set_script, 0),
        _script_file(key.read_script, 1),
        f'printf \'{{"format":"{ENFORCE_FORMAT}","set":[\' > "$dir/doc"',
        f"{_run(item, key.set_script, 0, limit='$setlimit', env=SET_ENV)}; emit set $?",
        'printf \'],"items":[\' >> "$dir/doc"; sep=""',
        f"{_run(item, key.read_script, 1)}; emit {item.pk} $?",
        *_finish(),
    ]
    return Rendered(
        interpreter="sh",
        content="\n".join(lines) + "\n",
        timeout_seconds=60 + SET_TIMEOUT_SECONDS + ITEM_TIMEOUT_SECONDS,
        privileged=key.set_script.privileged or key.read_script.privileged,
    )


def _ps_text(value: str) -> str:
    """A PowerShell expression for ``value``: base64 decoded as UTF-8, so that no quote (PowerShell
    takes the typographic ones for quotes too), ``$`` or backtick in it is ever read as code."""
    encoded = base64.b64encode(value.encode()).decode()
    return f"[Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{encoded}'))"


# Windows PowerShell: one script per child process, its environment its parameters alone, stdin
# closed, stdout and stderr kept as bytes, killed after its limit (exit 124, as `timeout`), its
# entry added to a list of the document.
_PS_PROLOGUE = """$ErrorActionPreference = 'Stop'
$dir = Join-Path (Get-Location).ProviderPath ('audit.' + [guid]::NewGuid().ToString('N'))
New-Item -ItemType Directory -Path $dir | Out-Null
$entries = New-Object System.Collections.Generic.List[string]
function Head([byte[]]$bytes, [int]$cap) {
  if ($bytes.Length -le $cap) { return ,$bytes }
  return ,$bytes[0..($cap - 1)]
}
function Invoke-Script($into, [string]$item, [string]$file, [hashtable]$params, [int]$limit) {
  $psi = New-Object System.Diagnostics.ProcessStartInfo
  $psi.FileName = Join-Path $PSHOME 'powershell.exe'
  $psi.Arguments = '-NoProfile -NonInteractive -ExecutionPolicy Bypass -File "' + $file + '"'
  $psi.UseShellExecute = $false
  $psi.RedirectStandardInput = $true; $psi.RedirectStandardOutput = $true; $psi.RedirectStandardError = $true
  foreach ($name in $params.Keys) { $psi.EnvironmentVariables[$name] = $params[$name] }
  $code = 0; $out = New-Object IO.MemoryStream; $err = New-Object IO.MemoryStream
  try {
    $p = [System.Diagnostics.Process]::Start($psi)
    $p.StandardInput.Close()
    $reads = $p.StandardOutput.BaseStream.CopyToAsync($out), $p.StandardError.BaseStream.CopyToAsync($err)
    if ($p.WaitForExit($limit)) { $code = $p.ExitCode } else { $p.Kill(); $code = 124 }
    [void][Threading.Tasks.Task]::WaitAll($reads, 5000)
  } catch { $code = 127; $bytes = [Text.Encoding]::UTF8.GetBytes("$_"); $err.Write($bytes, 0, $bytes.Length) }
  $o = $out.ToArray(); $e = $err.ToArray()
  $stdout = [Convert]::ToBase64String((Head $o __CAP__))
  $stderr = [Convert]::ToBase64String((Head $e __ERRCAP__))
  $into.Add('{"item":"' + $item + '","exit_code":' + $code + ',"stdout_bytes":' + $o.Length + `
    ',"stdout":"' + $stdout + '","stderr":"' + $stderr + '"}')
}"""

_PS_FINISH = """  $doc = __DOCUMENT__
  if ($env:RMM_RESULT_PATH) { [IO.File]::WriteAllText($env:RMM_RESULT_PATH, $doc) }
  else { [Console]::Out.Write($doc + "`n") }
} finally {
  Remove-Item -LiteralPath $dir -Recurse -Force -ErrorAction SilentlyContinue
}"""


def _ps_script(title: str, cap: int, stderr_cap: int, body: list[str], document: str) -> str:
    """A Windows PowerShell profile script: the prologue (``Invoke-Script`` with these caps), ``body``
    run in a ``try`` whose ``finally`` removes the work folder, then ``document`` (a PowerShell
    expression of the JSON text, from the lists the body filled) written as the result."""
    lines = [
        f"# {title} (docs/profiles.md).",
        _PS_PROLOGUE.replace("__CAP__", str(cap)).replace("__ERRCAP__", str(stderr_cap)),
        "try {",
        *body,
        _PS_FINISH.replace("__DOCUMENT__", document),
    ]
    return "\n".join(lines) + "\n"


def _ps_script_file(script, number: int) -> str:
    """The approved script's exact content, written once as ``$dir/s<number>.ps1`` (base64 in the text)."""
    encoded = base64.b64encode(script.content.encode()).decode()
    return f"  [IO.File]::WriteAllBytes((Join-Path $dir 's{number}.ps1'), [Convert]::FromBase64String('{encoded}'))"


def _ps_params(item: ConfigurationItem, **extra: str) -> str:
    """The child's environment: the item's ``RMM_PARAM_*`` and ``extra``, each value base64 in the text."""
    env = {param_env_name(name): value for name, value in item.parameters.items()} | extra
    return "@{ " + "; ".join(f"'{name}' = {_ps_text(value)}" for name, value in sorted(env.items())) + " }"


def _ps_run(into: str, entry: str, number: int, params: str, seconds: int) -> str:
    return f"  Invoke-Script {into} '{entry}' (Join-Path $dir 's{number}.ps1') {params} {seconds * 1000}"


def _ps_joined(name: str) -> str:
    """Inside a single-quoted PowerShell string: the entries of list ``$name``, joined by commas."""
    return f"' + (${name} -join ',') + '"


def render_windows(items: list[ConfigurationItem]) -> Rendered:
    """One Windows PowerShell script that writes each distinct approved read script once into a
    private folder under the work directory and runs it for each item in a child ``powershell.exe``
    whose environment carries the item's ``RMM_PARAM_*`` (every value and script base64 in the
    text), with the same document, caps and exit codes as :func:`render_linux`."""
    cap, stderr_cap = caps(len(items))
    scripts: dict[str, int] = {}
    body = []
    for item in items:
        script = item.config_key.read_script
        if str(script.pk) not in scripts:
            scripts[str(script.pk)] = len(scripts)
            body.append(_ps_script_file(script, scripts[str(script.pk)]))
    for item in items:
        number = scripts[str(item.config_key.read_script.pk)]
        body.append(_ps_run("$entries", str(item.pk), number, _ps_params(item), ITEM_TIMEOUT_SECONDS))
    document = f"""'{{"format":"{FORMAT}","items":[{_ps_joined("entries")}]}}'"""
    return Rendered(
        interpreter="powershell",
        content=_ps_script(f"Configuration audit: {len(items)} item(s), read only", cap, stderr_cap, body, document),
        timeout_seconds=min(3600, 60 + ITEM_TIMEOUT_SECONDS * len(items)),
        privileged=any(item.config_key.read_script.privileged for item in items),
    )


def render_enforcement_windows(item: ConfigurationItem) -> Rendered:
    """One Windows PowerShell script for one item, as :func:`render_enforcement_linux` for sh: its
    key's approved set script in a child ``powershell.exe`` with the item's ``RMM_PARAM_*``,
    ``RMM_COMPARISON`` and ``RMM_DESIRED_VALUE`` (base64 in the text, as the signed arguments say
    them), then its read script afresh, each kept as in an audit, in the same document."""
    key = item.config_key
    cap, stderr_cap = caps(1)
    set_env = _ps_params(item, RMM_COMPARISON=item.comparison, RMM_DESIRED_VALUE=item.desired_value)
    body = [
        "  $sets = New-Object System.Collections.Generic.List[string]",
        _ps_script_file(key.set_script, 0),
        _ps_script_file(key.read_script, 1),
        _ps_run("$sets", "set", 0, set_env, SET_TIMEOUT_SECONDS),
        _ps_run("$entries", str(item.pk), 1, _ps_params(item), ITEM_TIMEOUT_SECONDS),
    ]
    document = f"""'{{"format":"{ENFORCE_FORMAT}","set":[{_ps_joined("sets")}],"items":[{_ps_joined("entries")}]}}'"""
    title = f"Configuration enforcement: {key.name}, its set script then a fresh read"
    return Rendered(
        interpreter="powershell",
        content=_ps_script(title, cap, stderr_cap, body, document),
        timeout_seconds=60 + SET_TIMEOUT_SECONDS + ITEM_TIMEOUT_SECONDS,
        privileged=key.set_script.privileged or key.read_script.privileged,
    )


# platform -> renderer
RENDERERS: dict[str, Callable[[list[ConfigurationItem]], Rendered]] = {"linux": render_linux, "windows": render_windows}
ENFORCEMENT_RENDERERS: dict[str, Callable[[ConfigurationItem], Rendered]] = {
    "linux": render_enforcement_linux,
    "windows": render_enforcement_windows,
}


def platform_of(items: list[ConfigurationItem]) -> str:
    """The one platform of a revision's keys; an audit renders one script for one platform."""
    platforms = {item.config_key.platform for item in items}
    if len(platforms) != 1:
        raise ValueError(f"the profile mixes platforms: {', '.join(sorted(platforms))}")
    return platforms.pop()


def render(items: list[ConfigurationItem]) -> Rendered:
    platform = platform_of(items)
    if platform not in RENDERERS:
        raise ValueError(f"no audit renderer for {platform} keys yet")
    return RENDERERS[platform](items)


# --- reading the document -------------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """What one item's read script did."""

    exit_code: int
    stdout: bytes  # at most the cap
    stdout_bytes: int  # how many it printed in all
    stderr: bytes


def _b64(value, where: str) -> bytes:
    if not isinstance(value, str):
        raise AuditOutputError(f"{where} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AuditOutputError(f"{where} is not base64") from exc


def _int(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise AuditOutputError(f"{where} is not an integer")
    return value


def _document(result: dict, fmt: str) -> dict:
    """The result's structured document, or else its stdout read as JSON (an agent without
    structured results), when it is a ``fmt`` document."""
    document = result.get("structured")
    if document is None:
        stdout = result.get("stdout") or b""
        try:
            document = json.loads(stdout)
        except (ValueError, UnicodeDecodeError) as exc:
            truncated = " (its output was truncated)" if result.get("stdout_truncated") else ""
            raise AuditOutputError(
                f"the output is not {'an audit' if fmt == FORMAT else 'an enforcement'} document{truncated}"
            ) from exc
    if not isinstance(document, dict) or document.get("format") != fmt:
        raise AuditOutputError(f"the output is not a {fmt} document")
    return document


def _readings(document: dict, name: str) -> dict[str, Reading]:
    entries = document.get(name)
    if not isinstance(entries, list):
        raise AuditOutputError(f"the document has no {'item' if name == 'items' else name} list")
    readings = {}
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("item"), str):
            raise AuditOutputError(f"{name}[{n}] names no item")
        readings[entry["item"]] = Reading(
            exit_code=_int(entry.get("exit_code"), f"{name}[{n}].exit_code"),
            stdout=_b64(entry.get("stdout"), f"{name}[{n}].stdout"),
            stdout_bytes=_int(entry.get("stdout_bytes"), f"{name}[{n}].stdout_bytes"),
            stderr=_b64(entry.get("stderr", ""), f"{name}[{n}].stderr"),
        )
    return readings


def parse(result: dict) -> dict[str, Reading]:
    """The readings by item id, from the result's structured document or else its stdout (an agent
    without structured results). Raises :class:`AuditOutputError` when neither is one."""
    return _readings(_document(result, FORMAT), "items")


def parse_enforcement(result: dict) -> tuple[Reading | None, dict[str, Reading]]:
    """An enforcement's document: (the set script's run, None when it is missing; the re-read's
    readings by item id). Raises :class:`AuditOutputError` when the output is no such document."""
    document = _document(result, ENFORCE_FORMAT)
    return _readings(document, "set").get("set"), _readings(document, "items")


# --- comparing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    state: str
    observed_value: str | None  # the value as text; None when absent or unread
    reason: str

    @property
    def compliant(self) -> bool | None:
        return None if self.state == ObservationState.ERROR else self.state == ObservationState.COMPLIANT


def _error(reason: str, value: str | None = None) -> Verdict:
    return Verdict(ObservationState.ERROR, value, reason)


def _as_int(text: str) -> int | None:
    return int(text) if re.fullmatch(r"\s*-?\d{1,18}\s*", text) else None


def _holds(comparison: str, value_type: str, desired: str, value: str) -> bool | str:
    """Whether ``value`` meets the item, or why it cannot be compared."""
    if value_type == ValueType.INTEGER or comparison in (Comparison.AT_LEAST, Comparison.AT_MOST):
        number, wanted = _as_int(value), _as_int(desired)
        if number is None or wanted is None:
            return f"not an integer: {value[:100]!r}"
        return {
            Comparison.EQUALS: number == wanted,
            Comparison.NOT_EQUALS: number != wanted,
            Comparison.AT_LEAST: number >= wanted,
            Comparison.AT_MOST: number <= wanted,
        }.get(comparison, f"{comparison} does not compare integers")
    if comparison == Comparison.EQUALS:
        return value == desired
    if comparison == Comparison.NOT_EQUALS:
        return value != desired
    if comparison == Comparison.CONTAINS:
        return desired in value
    if comparison == Comparison.REGEX:
        try:
            return re.search(desired, value) is not None
        except re.error as exc:  # checked when the item was written; never a 500 here
            return f"not a regular expression: {exc}"
    return f"unknown comparison {comparison}"


def compare(comparison: str, value_type: str, desired: str, reading: Reading | None, cap: int = VALUE_CAP) -> Verdict:
    """One item's verdict from its reading: exit 3 is absent (only ``absent`` is then met), exit 0
    a value (its one trailing newline dropped), any other exit an error, as is a value that is
    not UTF-8 text or was cut at ``cap`` bytes."""
    if reading is None:
        return _error("the item is missing from the audit's output")
    if reading.exit_code == ABSENT_EXIT:
        met = comparison == Comparison.ABSENT
        return Verdict(ObservationState.COMPLIANT if met else ObservationState.NON_COMPLIANT, None, "absent")
    if reading.exit_code != 0:
        stderr = reading.stderr.decode("utf-8", "replace").strip()
        return _error(f"the read script exited {reading.exit_code}" + (f": {stderr[:300]}" if stderr else ""))
    if reading.stdout_bytes > len(reading.stdout) or len(reading.stdout) > cap:
        return _error(f"the value is longer than {cap} bytes ({reading.stdout_bytes})")
    raw = reading.stdout[:-1] if reading.stdout.endswith(b"\n") else reading.stdout
    shown = display_text(raw)[0]  # what the databases can hold: NUL and non-UTF-8 bytes escaped
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        return _error("the value is not UTF-8 text", shown)
    if comparison == Comparison.ABSENT:
        return Verdict(ObservationState.NON_COMPLIANT, shown, "present")
    held = _holds(comparison, value_type, desired, value)
    if isinstance(held, str):
        return _error(held, shown)
    state = ObservationState.COMPLIANT if held else ObservationState.NON_COMPLIANT
    return Verdict(state, shown, f"{comparison} {desired!r}")


# --- an enforcement's outcome ---------------------------------------------------------------------


@dataclass(frozen=True)
class Enforced:
    """What an enforcement's instruction did: the set script's run (None when the output has none)
    and the re-read's verdict, and why the enforcement failed ("" when the re-read complies and the
    set script exited 0)."""

    set_run: Reading | None
    readings: dict[str, Reading]
    verdict: Verdict
    failure: str


def enforcement_outcome(arguments: list[str], result: dict) -> Enforced:
    """Judge an enforcement by its re-read, never by the set script's exit code alone: the item
    complies only when the fresh read says so. ``arguments`` are the instruction's signed ones
    (:func:`enforcement_arguments`), so the judgement needs nothing from the endpoint but its
    readings."""
    item_id, comparison, value_type, desired = arguments
    try:
        set_run, readings = parse_enforcement(result)
    except AuditOutputError as exc:
        return Enforced(None, {}, _error(str(exc)), str(exc))
    verdict = compare(comparison, value_type, desired, readings.get(item_id), value_cap(1))
    if set_run is None:
        failure = "the set script's run is missing from the output"
    elif set_run.exit_code != 0:
        stderr = set_run.stderr.decode("utf-8", "replace").strip()
        failure = f"the set script exited {set_run.exit_code}" + (f": {stderr[:300]}" if stderr else "")
    elif verdict.state != ObservationState.COMPLIANT:
        shown = "absent" if verdict.observed_value is None else repr(verdict.observed_value[:100])
        failure = (
            f"the set script exited 0 but the re-read is {verdict.state}: {shown} ({verdict.reason or comparison})"
        )
    else:
        failure = ""
    return Enforced(set_run, readings, verdict, failure)
