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


def render_linux(items: list[ConfigurationItem]) -> Rendered:
    """One POSIX sh script that runs each item's approved read script with its ``RMM_PARAM_*``
    environment (in a subshell of its own, stdin /dev/null), captures stdout, stderr and the exit
    code, and writes the document: to ``$RMM_RESULT_PATH`` when the agent gives one (protocol 2's
    structured result), else to stdout. Every value is base64 in the document, so no byte a read
    script prints can break the JSON; parameters and scripts are single-quoted for the shell."""
    cap, stderr_cap = caps(len(items))
    scripts: dict[str, int] = {}  # read script id -> its file number
    lines = [
        "#!/bin/sh",
        f"# Configuration audit: {len(items)} item(s), read only (docs/profiles.md).",
        "set -u",
        "umask 077",
        # relative: the run-as account may not reach its work directory by its absolute path
        'dir=$(mktemp -d ./audit.XXXXXX) || { echo "audit: no work folder" >&2; exit 70; }',
        "trap 'rm -rf \"$dir\"' EXIT",
        f'limit=""; if command -v timeout >/dev/null 2>&1; then limit="timeout {ITEM_TIMEOUT_SECONDS}"; fi',
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
    for item in items:
        script = item.config_key.read_script
        if str(script.pk) not in scripts:
            scripts[str(script.pk)] = len(scripts)
            lines.append(f"printf '%s' {shlex.quote(script.content)} > \"$dir/s{scripts[str(script.pk)]}\"")
    lines.append(f'printf \'{{"format":"{FORMAT}","items":[\' > "$dir/doc"')
    for item in items:
        script = item.config_key.read_script
        exports = "".join(
            f"export {param_env_name(name)}={shlex.quote(value)}; " for name, value in sorted(item.parameters.items())
        )
        interpreter = INTERPRETERS.get(script.language, script.language)
        lines.append(
            f'( {exports}exec $limit {interpreter} "$dir/s{scripts[str(script.pk)]}" ) '
            f'</dev/null >"$dir/out" 2>"$dir/err"; emit {item.pk} $?'
        )
    lines += [
        "printf ']}\\n' >> \"$dir/doc\"",
        'if [ -n "${RMM_RESULT_PATH:-}" ]; then cat "$dir/doc" > "$RMM_RESULT_PATH"; else cat "$dir/doc"; fi',
    ]
    return Rendered(
        interpreter="sh",
        content="\n".join(lines) + "\n",
        # every read may take its own timeout, and the whole never more than an hour
        timeout_seconds=min(3600, 60 + ITEM_TIMEOUT_SECONDS * len(items)),
        # unprivileged unless a read script itself was approved as privileged
        privileged=any(item.config_key.read_script.privileged for item in items),
    )


# platform -> renderer; a PowerShell renderer for windows keys plugs in here
RENDERERS: dict[str, Callable[[list[ConfigurationItem]], Rendered]] = {"linux": render_linux}


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


def parse(result: dict) -> dict[str, Reading]:
    """The readings by item id, from the result's structured document or else its stdout (an agent
    without structured results). Raises :class:`AuditOutputError` when neither is one."""
    document = result.get("structured")
    if document is None:
        stdout = result.get("stdout") or b""
        try:
            document = json.loads(stdout)
        except (ValueError, UnicodeDecodeError) as exc:
            truncated = " (its output was truncated)" if result.get("stdout_truncated") else ""
            raise AuditOutputError(f"the output is not an audit document{truncated}") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise AuditOutputError(f"the output is not a {FORMAT} document")
    entries = document.get("items")
    if not isinstance(entries, list):
        raise AuditOutputError("the document has no item list")
    readings = {}
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("item"), str):
            raise AuditOutputError(f"items[{n}] names no item")
        readings[entry["item"]] = Reading(
            exit_code=_int(entry.get("exit_code"), f"items[{n}].exit_code"),
            stdout=_b64(entry.get("stdout"), f"items[{n}].stdout"),
            stdout_bytes=_int(entry.get("stdout_bytes"), f"items[{n}].stdout_bytes"),
            stderr=_b64(entry.get("stderr", ""), f"items[{n}].stderr"),
        )
    return readings


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
