"""Patch scans: the read-only collection scripts the endpoint runs, and the parsers that read what
they report. The agent only runs the script; every line is parsed here, on the server.

Linux (one sh script for both families): ``dpkg-query`` for what is installed and a simulated
``apt-get -s dist-upgrade`` for what is available on Debian and Ubuntu; ``rpm -qa``, ``dnf
check-update`` and ``dnf updateinfo list --updates`` (advisory ids and severities) on the RHEL
family. Windows: the Windows Update Agent API from PowerShell. Each writes one JSON document at
``$RMM_RESULT_PATH`` holding the tools' output lines as they came (``format`` names it), so that a
change in parsing is a server change, never a new script on every endpoint.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from patching.models import Severity

FORMAT = "rmm-patch-scan/1"
FAMILIES = ("dpkg", "rpm", "wua")
MAX_NAME = 200

# The tools' output, each line a JSON string: control characters dropped, tabs made spaces,
# backslashes and quotes escaped (awk writes the array).
LINUX_SCRIPT = r"""set -u
export LC_ALL=C
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
lines() {
  tr -d '\000-\010\013-\037' < "$1" | tr '\011' ' ' | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' |
    awk 'BEGIN { printf "[" } { printf "%s\"%s\"", (NR > 1 ? "," : ""), $0 } END { printf "]" }'
}
os_id=linux; os_version=""
if [ -r /etc/os-release ]; then
  os_id=$(. /etc/os-release && printf %s "${ID:-linux}" | tr -cd 'a-z0-9._-')
  os_version=$(. /etc/os-release && printf %s "${VERSION_ID:-}" | tr -cd 'A-Za-z0-9._-')
fi
: > "$tmp/advisories"
if command -v dpkg-query >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  family=dpkg
  dpkg-query -W -f='${binary:Package} ${Version} ${db:Status-Status}\n' > "$tmp/installed" 2> "$tmp/err" ||
    { cat "$tmp/err" >&2; exit 3; }
  apt-get -s -q -o Debug::NoLocking=1 dist-upgrade > "$tmp/available" 2> "$tmp/err" ||
    { cat "$tmp/err" >&2; exit 4; }
elif command -v rpm >/dev/null 2>&1 && command -v dnf >/dev/null 2>&1; then
  family=rpm
  rpm -qa --qf '%{NAME} %{EPOCHNUM}:%{VERSION}-%{RELEASE} %{ARCH}\n' > "$tmp/installed" 2> "$tmp/err" ||
    { cat "$tmp/err" >&2; exit 3; }
  dnf -q check-update > "$tmp/available" 2> "$tmp/err"
  rc=$?
  [ "$rc" -eq 0 ] || [ "$rc" -eq 100 ] || { cat "$tmp/err" >&2; exit 4; }
  dnf -q updateinfo list --updates > "$tmp/advisories" 2>/dev/null || : > "$tmp/advisories"
else
  echo "no package manager this scan reads (dpkg with apt, or rpm with dnf)" >&2
  exit 2
fi
{
  printf '{"format": "%s", "family": "%s", "os_id": "%s", "os_version": "%s", "wanted": %s, ' \
    "__FORMAT__" "$family" "$os_id" "$os_version" '__WANTED__'
  printf '"installed": '; lines "$tmp/installed"
  printf ', "available": '; lines "$tmp/available"
  printf ', "advisories": '; lines "$tmp/advisories"
  printf '}'
} > "$RMM_RESULT_PATH"
echo "scanned: $family $os_id $os_version, $(wc -l < "$tmp/installed") packages," \
  "$(wc -l < "$tmp/available") lines of updates"
"""

# The Windows Update Agent: installed and applicable updates, each with its KB, id, revision and
# MSRC severity. The document is written by .NET as UTF-8 without a byte-order mark.
WINDOWS_SCRIPT = r"""$ErrorActionPreference = 'Stop'
$session = New-Object -ComObject Microsoft.Update.Session
$searcher = $session.CreateUpdateSearcher()
$updates = @()
foreach ($criteria in @('IsInstalled=1 and IsHidden=0', 'IsInstalled=0 and IsHidden=0')) {
  $found = $searcher.Search($criteria)
  foreach ($u in $found.Updates) {
    $updates += [ordered]@{
      title = [string]$u.Title
      kb = (@($u.KBArticleIDs) | ForEach-Object { 'KB' + $_ }) -join ','
      update_id = [string]$u.Identity.UpdateID
      revision = [int]$u.Identity.RevisionNumber
      severity = [string]$u.MsrcSeverity
      installed = [bool]$u.IsInstalled
    }
  }
}
$os = Get-CimInstance Win32_OperatingSystem
$doc = [ordered]@{
  format = '__FORMAT__'; family = 'wua'; os_id = 'windows'; os_version = [string]$os.Version; updates = $updates
}
# wanted: the server's own JSON, as signed in this script, spliced in whole (never re-encoded)
$json = $doc | ConvertTo-Json -Compress -Depth 4
$json = $json.Substring(0, $json.Length - 1) + ',"wanted":' + '__WANTED__' + '}'
[System.IO.File]::WriteAllText($env:RMM_RESULT_PATH, $json)
Write-Output ("scanned: windows " + $os.Version + ", " + $updates.Count + " updates")
"""


def _pairs(wanted) -> str:
    """(package, version) pairs as JSON, ASCII only (escapes for the rest)."""
    return json.dumps([[name, version] for name, version in wanted], separators=(",", ":"))


def render_linux(wanted: list[tuple[str, str]] = ()) -> str:
    """The Linux scan; ``wanted`` ((package, version) pairs) is what a patch job's re-scan is
    judged against, carried in the signed script and echoed in its document."""
    # Package names and versions are checked (PACKAGE, VERSION): no quote or backslash in them.
    return LINUX_SCRIPT.replace("__FORMAT__", FORMAT).replace("__WANTED__", _pairs(wanted))


def ps_quote(text: str) -> str:
    """A PowerShell single-quoted string: nothing in it is special but the quote, written twice."""
    return "'" + text.replace("'", "''") + "'"


def render_windows(wanted: list[tuple[str, str]] = ()) -> str:
    """The Windows scan; ``wanted`` ((update title, KB) pairs) as for :func:`render_linux`. An
    update's title is any text: the pairs are a quoted PowerShell string, spliced into the
    document as they were signed."""
    return WINDOWS_SCRIPT.replace("__FORMAT__", FORMAT).replace("'__WANTED__'", ps_quote(_pairs(wanted)))


PACKAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+:~-]{0,199}$")
MSRC = {"critical": Severity.CRITICAL, "important": Severity.HIGH, "moderate": Severity.MEDIUM, "low": Severity.LOW}
# dnf's updateinfo: "Critical/Sec.", "Important/Sec.", "Moderate/Sec.", "Low/Sec.", "bugfix", "enhancement"
RPM_SEVERITY = MSRC


class ScanError(ValueError):
    """A document that is not a scan's: the scan step fails with this reason."""


@dataclass
class Available:
    version: str
    severity: int = Severity.NONE
    advisory: str = ""


@dataclass
class Scan:
    """What a scan reported, parsed: per package (product), the installed version and the
    available update."""

    family: str
    vendor: str
    installed: dict[str, str] = field(default_factory=dict)
    available: dict[str, Available] = field(default_factory=dict)
    wanted: list[tuple[str, str]] = field(default_factory=list)

    def digest(self) -> str:
        """The same report, the same digest (what the server compares with the last scan's)."""
        body = {
            "family": self.family,
            "vendor": self.vendor,
            "installed": sorted(self.installed.items()),
            "available": sorted((k, a.version, int(a.severity), a.advisory) for k, a in self.available.items()),
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _strings(document: dict, key: str) -> list[str]:
    value = document.get(key, [])
    if not isinstance(value, list) or not all(isinstance(line, str) for line in value):
        raise ScanError(f"{key}: not a list of lines")
    return value


def _package(name: str) -> str | None:
    """A package's name without a multi-arch qualifier (libc6:amd64 is libc6)."""
    name = name.split(":", 1)[0]
    return name if PACKAGE.match(name) else None


def parse(document: object) -> Scan:
    """A scan's structured result: raises :class:`ScanError` with the reason for any other."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ScanError(f"not a scan document (format {FORMAT})")
    family = document.get("family")
    if family not in FAMILIES:
        raise ScanError(f"unknown family {family!r}")
    vendor = document.get("os_id")
    if not isinstance(vendor, str) or not re.match(r"^[a-z0-9._-]{1,100}$", vendor):
        raise ScanError("os_id: not a distribution's id")
    wanted = document.get("wanted", [])
    if not isinstance(wanted, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair) for pair in wanted
    ):
        raise ScanError("wanted: not a list of [package, version]")
    scan = Scan(family=family, vendor=vendor, wanted=[(name, version) for name, version in wanted])
    if family == "dpkg":
        _dpkg(scan, _strings(document, "installed"), _strings(document, "available"))
    elif family == "rpm":
        _rpm(scan, _strings(document, "installed"), _strings(document, "available"), _strings(document, "advisories"))
    else:
        _wua(scan, document.get("updates"))
    return scan


# Inst openssl [3.0.11-1~deb12u1] (3.0.11-1~deb12u2 Debian-Security:12/stable-security [amd64])
APT_INST = re.compile(r"^Inst (\S+) \[([^\]]+)\] \((\S+) ([^\[]*)")


def _dpkg(scan: Scan, installed: list[str], available: list[str]) -> None:
    for line in installed:
        parts = line.split()
        if len(parts) != 3 or parts[2] != "installed":  # half-configured, config-files, …: not installed
            continue
        name = _package(parts[0])
        if name and VERSION.match(parts[1]):
            scan.installed[name] = parts[1]
    for line in available:
        match = APT_INST.match(line)
        if not match:  # Conf and Remv lines, and Inst of a new package (no [old version])
            continue
        name, version, origin = _package(match[1]), match[3], match[4]
        if name and VERSION.match(version):
            # A security archive's update has no severity of its own here: the catalog's imports say.
            scan.available[name] = Available(version, advisory="security" if "-security" in origin else "")


def _nevra(text: str) -> tuple[str, str] | None:
    """name-[epoch:]version-release.arch → (name, [epoch:]version-release)."""
    base = text.rsplit(".", 1)[0] if "." in text else text
    parts = base.rsplit("-", 2)
    if len(parts) != 3:
        return None
    name, version = parts[0], f"{parts[1]}-{parts[2]}"
    return (name, version) if PACKAGE.match(name) and VERSION.match(version) else None


def _rpm_version(version: str) -> str:
    """rpm's 0:1.2-3 is 1.2-3: an epoch only when it is not 0, as dnf and the advisories write it."""
    return version[2:] if version.startswith("0:") else version


def _rpm(scan: Scan, installed: list[str], available: list[str], advisories: list[str]) -> None:
    for line in installed:
        parts = line.split()
        if len(parts) == 3 and PACKAGE.match(parts[0]) and VERSION.match(parts[1]):
            scan.installed[parts[0]] = _rpm_version(parts[1])
    for line in available:
        if line.startswith(("Obsoleting", "Security:", "Last metadata")):
            if line.startswith("Obsoleting"):
                break  # what follows lists obsoleted packages, not updates
            continue
        parts = line.split()
        if len(parts) != 3 or "." not in parts[0]:
            continue
        name = parts[0].rsplit(".", 1)[0]
        if PACKAGE.match(name) and VERSION.match(parts[1]):
            scan.available[name] = Available(_rpm_version(parts[1]))
    for line in advisories:
        parts = line.split()
        if len(parts) != 3:
            continue
        advisory, kind, nevra = parts
        found = _nevra(nevra)
        if found is None or found[0] not in scan.available:
            continue
        update = scan.available[found[0]]
        if update.version != found[1]:
            continue
        severity = RPM_SEVERITY.get(kind.split("/", 1)[0].lower(), Severity.NONE)
        if severity >= update.severity:
            update.severity, update.advisory = severity, advisory[:200]


def _wua(scan: Scan, updates: object) -> None:
    if isinstance(updates, dict):  # ConvertTo-Json writes a list of one as the object itself
        updates = [updates]
    if updates is None:
        updates = []
    if not isinstance(updates, list):
        raise ScanError("updates: not a list")
    for update in updates:
        if not isinstance(update, dict):
            raise ScanError("updates: not a list of objects")
        title = str(update.get("title") or "")[:MAX_NAME].strip()
        kb = str(update.get("kb") or "").split(",")[0].strip()
        patch_id = kb or str(update.get("update_id") or "")
        if not title or not patch_id or len(patch_id) > MAX_NAME:
            continue
        # The product is the update's title, its patch id the KB (or the update's id): one update
        # of Windows is one product here, installed at its KB or missing.
        if update.get("installed") is True:
            scan.installed[title] = patch_id
        else:
            severity = MSRC.get(str(update.get("severity") or "").lower(), Severity.NONE)
            scan.available[title] = Available(patch_id, severity=severity, advisory=kb)
