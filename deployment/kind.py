"""The "deployment" job kind: install one approved package on one asset, then read whether it is
installed. The agent fetches the installer by its hash and checks it before anything runs
(docs/agent.md, Artefacts); the server decides from the detection read, never from the
installer's exit code alone.

Steps, in order, each a signed instruction:

0. install (privileged): the package manager on the fetched file, with the package's silent
   arguments: ``dpkg -i`` for ``deb``, ``rpm -U --replacepkgs`` for ``rpm``;
1. detection (when the package has a rule): the package database (``dpkg-query``, ``rpm -q``) or
   a file's presence, written as the step's structured result ``{"installed": bool, "version":
   str}``; not installed, or another version than the rule names, fails the job.

On Windows (``msi``, ``exe``) the same two steps are PowerShell: ``msiexec /i … /qn /norestart``
or the installer itself with its silent arguments (Windows Installer's 3010, "a reboot is needed",
counts as done), and a detection read of the software's Uninstall entry (DisplayName,
DisplayVersion), a registry value or a file. They are tested by their rendering and by the
judging of recorded documents; no Windows endpoint runs in the tests. A ``script`` package is
fetched and run like an installer by its interpreter (``sh``, or PowerShell's ``-File``) with the
silent arguments. An uninstall removes through the package manager (deb, rpm), ``msiexec /x`` on
the fetched msi, or the fetched exe or script run with the uninstall arguments.
"""

from __future__ import annotations

import shlex

from deployment import services
from deployment.models import DeploymentAction, DeploymentJob, InstallerType, SoftwarePackage
from rmm.artefacts.states import ApprovalStatus
from rmm.core.errors import InvalidInput
from rmm.engine import registry
from rmm.engine.states import JobStatus
from rmm_agent.protocol import CAPABILITY_ARTEFACTS, RESULT_PATH_ENV, artefact_env_name

DEPLOYMENT_RESULT = "deployment_result"  # the evidence type of each finished step (apps.py registers it)
WINDOWS = {InstallerType.MSI, InstallerType.EXE}
INSTALL = {
    InstallerType.DEB: "DEBIAN_FRONTEND=noninteractive dpkg -i",
    InstallerType.RPM: "rpm -U --replacepkgs",
}
UNINSTALL = {
    InstallerType.DEB: "DEBIAN_FRONTEND=noninteractive dpkg -r",
    InstallerType.RPM: "rpm -e",
}


def on_windows(package: SoftwarePackage) -> bool:
    """msi and exe packages, and PowerShell script packages, run on Windows; the others on Linux."""
    return package.installer_type in WINDOWS or package.interpreter == "powershell"


def _installed_query(package: SoftwarePackage, name: str) -> str:
    """Shell that sets ``state`` (installed or not) and ``version`` from the package database."""
    quoted = shlex.quote(name)
    if package.installer_type == InstallerType.DEB:
        return (
            f"out=$(dpkg-query -W -f='${{db:Status-Status}} ${{Version}}' {quoted} 2>/dev/null) || out=''\n"
            "state=${out%% *}; version=${out#* }\n"
            '[ "$state" = installed ] || version=""\n'
        )
    return (
        f"version=$(rpm -q --qf '%{{VERSION}}-%{{RELEASE}}' {quoted} 2>/dev/null) && state=installed || "
        "{ state=absent; version=''; }\n"
    )


def render_detection(package: SoftwarePackage, *, expect: str = "installed") -> str:
    """The detection step's script: one JSON document at $RMM_RESULT_PATH, carrying what the
    server expects (``installed`` after an install, ``absent`` after an uninstall)."""
    rule = package.detection
    if rule["type"] == "package":
        read = _installed_query(package, rule["name"])
    else:  # "file" (a registry rule is refused for deb and rpm by prepare)
        read = f"if [ -e {shlex.quote(rule['path'])} ]; then state=installed; else state=absent; fi\nversion=''\n"
    # The versions are a package database's (digits, letters and . + ~ : -) and the rule's, which
    # the service checked for the same characters: nothing to escape in JSON or in printf's format.
    wanted = rule.get("version", "") if expect == "installed" else ""
    return (
        read
        + 'installed=false; [ "$state" = installed ] && installed=true\n'
        + f'printf \'{{"installed": %s, "version": "%s", "wanted": "{wanted}", "expect": "{expect}"}}\' '
        + '"$installed" "$version"'
        + f' > "${RESULT_PATH_ENV}"\n'
        + 'echo "installed=$installed version=$version"\n'
    )


def _ps(text: str) -> str:
    """A PowerShell single-quoted string: nothing inside is expanded; a quote is doubled."""
    return "'" + text.replace("'", "''") + "'"


# Where Windows lists installed software (64- and 32-bit views): a package rule's name is the
# entry's DisplayName, its version the DisplayVersion.
UNINSTALL_KEYS = (
    "'HKLM:\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Uninstall\\*',"
    "'HKLM:\\SOFTWARE\\WOW6432Node\\Microsoft\\Windows\\CurrentVersion\\Uninstall\\*'"
)


def render_windows_detection(package: SoftwarePackage, *, expect: str = "installed") -> str:
    """The detection step on Windows (PowerShell): the same JSON document as on Linux."""
    rule = package.detection
    if rule["type"] == "package":
        read = (
            f"$hit = Get-ItemProperty {UNINSTALL_KEYS} -ErrorAction SilentlyContinue |\n"
            f"  Where-Object {{ $_.DisplayName -eq {_ps(rule['name'])} }} | Select-Object -First 1\n"
            "$installed = [bool]$hit\n"
            "$version = if ($hit) { [string]$hit.DisplayVersion } else { '' }\n"
        )
    elif rule["type"] == "registry":
        value = rule.get("value")
        read = (
            f"$item = Get-ItemProperty -LiteralPath {_ps(rule['key'])} -ErrorAction SilentlyContinue\n"
            + (f"$found = if ($item) {{ $item.{_ps(value)} }} else {{ $null }}\n" if value else "$found = $item\n")
            + "$installed = $null -ne $found\n"
            + "$version = if ($found -is [string]) { $found } else { '' }\n"
        )
        if rule.get("data"):
            read += f"if ($installed -and $version -ne {_ps(rule['data'])}) {{ $installed = $false }}\n"
    else:  # "file"
        read = f"$installed = Test-Path -LiteralPath {_ps(rule['path'])}\n$version = ''\n"
    wanted = rule.get("version", "") if rule["type"] == "package" and expect == "installed" else ""
    return (
        "$ErrorActionPreference = 'Stop'\n"
        + read
        + f"$doc = [ordered]@{{ installed = $installed; version = $version; wanted = {_ps(wanted)}; "
        + f"expect = {_ps(expect)} }}\n"
        # .NET's WriteAllText writes UTF-8 without the byte-order mark Windows PowerShell's
        # Set-Content would put first (the agent reads the document as JSON).
        + "[System.IO.File]::WriteAllText($env:RMM_RESULT_PATH, ($doc | ConvertTo-Json -Compress))\n"
        + 'Write-Output "installed=$installed version=$version"\n'
    )


def render_windows_change(package: SoftwarePackage, *, uninstall: bool = False) -> str:
    """The install (or uninstall) step on Windows (PowerShell), on the fetched file: msiexec ``/i``
    (``/x``) for an msi, the installer itself for an exe, PowerShell ``-File`` for a script, each
    with the package's silent (uninstall) arguments; Windows Installer's 3010 (done, a reboot is
    needed) is success and is said on stdout."""
    file = f"$env:{artefact_env_name(package.filename)}"
    given = package.uninstall_args if uninstall else package.silent_args
    extra = f" + {_ps(given)}" if given else ""
    if package.installer_type == InstallerType.MSI:
        verb = "/x" if uninstall else "/i"
        start = (
            f"$arguments = @('{verb}', ('\"' + {file} + '\"'), '/qn', '/norestart'){extra}\n"
            "$p = Start-Process -FilePath 'msiexec.exe' -ArgumentList $arguments -Wait -PassThru\n"
        )
    elif package.installer_type == InstallerType.SCRIPT:
        start = (
            "$arguments = @('-NoProfile', '-NonInteractive', '-ExecutionPolicy', 'Bypass', '-File', "
            f"('\"' + {file} + '\"')){extra}\n"
            "$p = Start-Process -FilePath 'powershell.exe' -ArgumentList $arguments -Wait -PassThru\n"
        )
    else:
        arguments = f" -ArgumentList {_ps(given)}" if given else ""
        start = f"$p = Start-Process -FilePath {file}{arguments} -Wait -PassThru\n"
    done = "removed" if uninstall else "installed"
    return (
        "$ErrorActionPreference = 'Stop'\n"
        + start
        + f"if ($p.ExitCode -eq 3010) {{ Write-Output '{done}; Windows asks for a reboot'; exit 0 }}\n"
        + "exit $p.ExitCode\n"
    )


def _change(job: DeploymentJob) -> registry.InstructionSpec:
    """The step that installs or removes, as root: on the fetched, hash-checked file, except a
    deb or rpm uninstall, which the package manager does by name."""
    package, uninstall = job.package, job.action == DeploymentAction.UNINSTALL
    artefact = registry.Artefact(package.filename, package.hash, package.size, package.blob)
    if on_windows(package):
        interpreter, content = "powershell", render_windows_change(package, uninstall=uninstall)
    elif uninstall and package.installer_type != InstallerType.SCRIPT:
        # The package database's name for it is its detection rule's (prepare insists on one).
        name = shlex.quote(package.detection["name"])
        interpreter, content = "sh", f"set -eu\n{UNINSTALL[package.installer_type]} {package.uninstall_args} {name}\n"
        artefact = None
    else:
        file = f'"${artefact_env_name(package.filename)}"'
        if package.installer_type == InstallerType.SCRIPT:
            command = f"sh {file} {package.uninstall_args if uninstall else package.silent_args}"
        else:
            command = f"{INSTALL[package.installer_type]} {package.silent_args} {file}"
        interpreter, content = "sh", f"set -eu\n{command.rstrip()}\n"
    return registry.InstructionSpec(
        asset=job.asset,
        interpreter=interpreter,
        content=content,
        timeout_seconds=1800,
        privileged=True,
        artefacts=(artefact,) if artefact else (),
    )


def render(job: DeploymentJob) -> list[registry.InstructionSpec]:
    package = job.package
    specs = [_change(job)]
    if package.detection:
        expect = "absent" if job.action == DeploymentAction.UNINSTALL else "installed"
        windows = on_windows(package)
        specs.append(
            registry.InstructionSpec(
                asset=job.asset,
                interpreter="powershell" if windows else "sh",
                content=(render_windows_detection if windows else render_detection)(package, expect=expect),
                timeout_seconds=120,
            )
        )
    return specs


def judge(inst, result: dict) -> tuple[str, str] | None:
    """The detection step decides. After an install: not installed, or another version than the
    rule names (the signed step carries it as ``wanted``), fails the job; after an uninstall
    (``expect`` absent), still installed fails it."""
    document = result.get("structured")
    if not isinstance(document, dict) or "installed" not in document:
        return None
    if document.get("expect") == "absent":
        return (JobStatus.FAILED, "detection: still installed") if document.get("installed") is not False else None
    if document.get("installed") is not True:
        return JobStatus.FAILED, "detection: not installed"
    wanted, found = document.get("wanted"), document.get("version")
    if wanted and found != wanted:
        return JobStatus.FAILED, f"detection: version {found!r} is installed, not {wanted!r}"
    return None


def prepare(*, package_id, action: str = DeploymentAction.INSTALL, requires_approval: bool = False) -> registry.NewJob:
    """A deployment installs one approved package (Law 3) of a type this server can deploy, or
    uninstalls it (the rollback, its own job under the same kind of authority); the requester
    may ask for each job's approval besides the package's."""
    if action not in DeploymentAction.values:
        raise InvalidInput(f"Must be one of: {', '.join(DeploymentAction.values)}.", field="action")
    package = SoftwarePackage.objects.filter(pk=package_id).first() if package_id else None
    if package is None:
        raise InvalidInput("No such package.", field="package")
    if package.approval_status != ApprovalStatus.APPROVED:
        raise InvalidInput(f"This package is {package.approval_status}, not approved.", field="package")
    if package.detection.get("type") == "registry" and not on_windows(package):
        raise InvalidInput("A registry detection rule cannot be read on Linux.", field="package")
    if action == DeploymentAction.UNINSTALL:
        if package.installer_type in (InstallerType.DEB, InstallerType.RPM):
            if package.detection.get("type") != "package":
                raise InvalidInput(
                    "An uninstall needs the package's detection rule to name it (type package).", field="action"
                )
        elif package.installer_type != InstallerType.MSI and not package.uninstall_args:
            # The exe or script itself removes, told so by its uninstall arguments; without them
            # it would install again.
            raise InvalidInput(
                f"An uninstall runs this {package.installer_type} with its uninstall_args, and it has none.",
                field="action",
            )
    return registry.NewJob(
        fields={"package": package, "action": action},
        requires_approval=bool(requires_approval),
        names={"package": str(package.pk)},
        created={"package_sha256": package.hash, "package": str(package), "action": action},
    )


def evidence_document(job: DeploymentJob, inst, stored, result: dict, late: bool) -> dict:
    package, task = job.package, job.psa_task
    return {
        "evidence_type": DEPLOYMENT_RESULT,
        "job": registry.job_document(job, "deployment"),
        "package": {
            "id": package.pk,
            "name": package.name,
            "version": package.version,
            "revision": package.revision,
            "installer_type": package.installer_type,
            "interpreter": package.interpreter,
            "sha256": package.hash,
            "size": package.size,
            "detection": package.detection,
            "author": package.author.get_username(),
            "approved_by": package.decided_by.get_username() if package.decided_by_id else None,
            "approved_at": package.decided_at,
        },
        "action": job.action,
        "step": job.action if inst.step == 0 else "detection",
        "instruction": registry.signed_instruction(inst),
        "authority": {"psa_task_id": task.pk, "psa_case_id": task.case_id},
        "asset": {"id": job.asset_id, "hostname": job.asset.hostname, "site": job.site.name},
        "result": registry.step_result(inst, result, late),
    }


registry.register(
    registry.JobKind(
        name="deployment",
        model=DeploymentJob,
        prepare=prepare,
        render=render,
        judge=judge,
        store_result=services.record_detection,
        evidence_recorded=services.detection_evidence,
        evidence_type=DEPLOYMENT_RESULT,
        evidence_entity="deployment_job",
        evidence_document=evidence_document,
        describe=lambda job: f"{job.action} {job.package.name} {job.package.version} on {job.asset.hostname}",
        card=lambda job: [
            ("Package", f"{job.package.name} {job.package.version} (v{job.package.revision})"),
            ("Installer", job.package.installer_type),
            ("sha256", job.package.hash),
            ("Privileged", "yes: installs as root"),
        ],
        select_related=(
            "package__author",
            "package__decided_by",
            "asset",
            "site",
            "psa_task__case",
            "requested_by",
            "decided_by",
        ),
        api_detail="deployment-job-detail",
        capability=CAPABILITY_ARTEFACTS,
    )
)
