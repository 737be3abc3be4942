"""Two job kinds, both dispatched by the engine like every other:

``patch_scan``: one read-only step per asset, the scan script of its OS family
(:mod:`patching.scans`); the server parses its document and writes the asset's patch state
(:mod:`patching.intake`).

``patch``: one asset's part of a patch job (:mod:`patching.jobs`), two steps:

0. install (privileged): ``apt-get install`` (``dnf install`` on the RHEL family) of the exact
   versions, or on Windows the Windows Update Agent's install of the updates by KB; the endpoint
   reboots after it when the job's reboot policy says so (``always``), or when the endpoint says
   one is pending (``if_required``: ``/var/run/reboot-required``, Windows' pending-reboot keys), and the
   next step waits until the agent is back. A failed install still runs the re-scan
   (``on_failure=continue``) and the job ends failed;
1. the re-scan, unprivileged, carrying the versions it is judged against: only this scan marks a
   patch installed (or failed), never the install's exit code, and asks the scanner to verify the
   findings of the asset whose fix it shows (:mod:`patching.findings`).
"""

from __future__ import annotations

import shlex

from patching import findings, intake, scans
from patching import windows as maintenance
from patching.models import PatchInstallJob, PatchScanJob, RebootPolicy
from rmm.engine import registry
from rmm.engine.states import JobStatus
from rmm_agent.protocol import CAPABILITY_STRUCTURED_RESULT
from rmm_agent.results import WINDOWS_REBOOT_KEYS, WINDOWS_SESSION_MANAGER

SCAN_KIND = "patch_scan"
PATCH_KIND = "patch"
SCAN_RESULT = "patch_scan_result"  # evidence types (apps.py registers them)
PATCH_RESULT = "patch_result"
REBOOT = {RebootPolicy.NEVER: "", RebootPolicy.IF_REQUIRED: "if_pending", RebootPolicy.ALWAYS: "now"}
SCAN_TIMEOUT = 900


def windows(asset) -> bool:
    return "windows" in (asset.os or "").lower()


def scan_step(asset, wanted: list[tuple[str, str]] = ()) -> registry.InstructionSpec:
    if windows(asset):
        return registry.InstructionSpec(
            asset=asset, interpreter="powershell", content=scans.render_windows(wanted), timeout_seconds=SCAN_TIMEOUT
        )
    return registry.InstructionSpec(
        asset=asset, interpreter="sh", content=scans.render_linux(wanted), timeout_seconds=SCAN_TIMEOUT
    )


def _judge_scan(inst, result: dict) -> tuple[str, str] | None:
    """A scan's document decides: not a scan's fails the step, and a re-scan fails it while a
    package it was to install is not installed. A step that wrote no document is judged by its
    exit code, as every kind's, and changes no patch state."""
    if result.get("structured") is None:
        return None
    try:
        scan = scans.parse(result.get("structured"))
    except scans.ScanError as exc:
        return JobStatus.FAILED, f"scan: {exc}"
    missing = [f"{name}={version}" for name, version in scan.wanted if scan.installed.get(name) != version]
    if missing:
        return JobStatus.FAILED, f"not installed after the install: {', '.join(missing)[:400]}"
    return None


def _ingest(job, inst, result: dict, *, after_job: bool):
    """The scan's document into the asset's patch state (only a completed scan's, exit 0)."""
    if not result or result.get("outcome") != "completed" or result.get("exit_code") != 0:
        return None
    try:
        scan = scans.parse(result.get("structured"))
    except scans.ScanError:
        return None
    wanted = {tuple(pair) for pair in scan.wanted} if after_job else None
    now = inst.finished_at or job.created_at
    stored = intake.ingest(job.asset_id, scan, now, job_wanted=wanted)
    if after_job:  # the findings whose fix the patch job's re-scan shows await verification
        findings.fixes_installed(job, scan, now)
    return stored


# --- patch_scan ----------------------------------------------------------------------------------


def prepare_scan() -> registry.NewJob:
    """A scan reads only: it asks for no approval of its own."""
    return registry.NewJob(fields={}, created={"reads_only": True})


def _result(inst, result: dict, late: bool) -> dict:
    stdout = result.get("stdout") if result else None
    return {**registry.reported_result(inst, stdout), "structured": inst.structured, "late": late}


def _written(stored) -> dict | None:
    if stored is None:
        return None
    return {
        "unchanged": stored.unchanged,
        "created": stored.created,
        "changed": stored.changed,
        "catalog_created": stored.catalog_created,
    }


def _job(job, kind: str) -> dict:
    return {
        "kind": kind,
        "id": job.pk,
        "status": job.status,
        "status_reason": job.status_reason,
        "requested_by": job.requested_by.get_username(),
        "created_at": job.created_at,
        "started_at": job.started_at,
        "completed_at": job.completed_at,
    }


def scan_evidence(job: PatchScanJob, inst, stored, result: dict, late: bool) -> dict:
    task = job.psa_task
    return {
        "evidence_type": SCAN_RESULT,
        "job": _job(job, SCAN_KIND),
        "instruction": {**registry.signed_instruction(inst), "privileged": inst.privileged},
        "authority": {"psa_task_id": task.pk, "psa_case_id": task.case_id},
        "asset": {"id": job.asset_id, "hostname": job.asset.hostname, "site": job.site.name},
        "result": _result(inst, result, late),
        "patch_state": _written(stored),
    }


registry.register(
    registry.JobKind(
        name=SCAN_KIND,
        model=PatchScanJob,
        prepare=prepare_scan,
        render=lambda job: [scan_step(job.asset)],
        judge=_judge_scan,
        store_result=lambda job, inst, result: _ingest(job, inst, result, after_job=False),
        evidence_type=SCAN_RESULT,
        evidence_entity="patch_scan_job",
        evidence_document=scan_evidence,
        describe=lambda job: f"patch scan of {job.asset.hostname}",
        card=lambda job: [("Reads only", "yes: a scan changes nothing")],
        select_related=("asset", "site", "psa_task__case", "requested_by", "decided_by"),
        capability=CAPABILITY_STRUCTURED_RESULT,
    )
)


# --- patch ---------------------------------------------------------------------------------------


def install_command(family: str, packages: list[list[str]]) -> str:
    """The exact versions, through the package manager (its dependencies resolved by it)."""
    if family == "rpm":
        names = " ".join(shlex.quote(f"{name}-{version}") for name, version in packages)
        return f"dnf -y install {names}"
    names = " ".join(shlex.quote(f"{name}={version}") for name, version in packages)
    return (
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
        f"-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold {names}"
    )


# The Windows Update Agent installs the updates the job names by KB (or update id), among those
# it offers; the document says what each install's result code was, whether the agent asked for a
# reboot, and which of the pending-reboot keys are set (the agent's own "if_pending" reads them
# too: docs/agent.md). It exits 1 if an update was not offered or did not install.
WINDOWS_INSTALL = r"""$ErrorActionPreference = 'Stop'
$wanted = @(__IDS__)
$session = New-Object -ComObject Microsoft.Update.Session
$offered = $session.CreateUpdateSearcher().Search('IsInstalled=0 and IsHidden=0').Updates
$chosen = New-Object -ComObject Microsoft.Update.UpdateColl
$notOffered = @()
foreach ($id in $wanted) {
  $match = $null
  foreach ($u in $offered) {
    $kbs = @($u.KBArticleIDs | ForEach-Object { 'KB' + $_ })
    if ($kbs -contains $id -or [string]$u.Identity.UpdateID -eq $id) { $match = $u; break }
  }
  if ($null -eq $match) { $notOffered += $id; continue }
  if (-not $match.EulaAccepted) { $match.AcceptEula() }
  [void]$chosen.Add($match)
}
$results = @()
$rebootRequired = $false
if ($chosen.Count -gt 0) {
  $downloader = $session.CreateUpdateDownloader()
  $downloader.Updates = $chosen
  [void]$downloader.Download()
  $installer = $session.CreateUpdateInstaller()
  $installer.Updates = $chosen
  $outcome = $installer.Install()
  $rebootRequired = [bool]$outcome.RebootRequired
  for ($i = 0; $i -lt $chosen.Count; $i++) {
    $one = $outcome.GetUpdateResult($i)
    # 2 succeeded, 3 succeeded with errors, 4 failed, 5 aborted
    $results += [ordered]@{
      title = [string]$chosen.Item($i).Title; result_code = [int]$one.ResultCode; hresult = [int]$one.HResult
    }
  }
}
$pending = @()
foreach ($key in @(__KEYS__)) { if (Test-Path $key) { $pending += $key } }
$renames = Get-ItemProperty -Path '__SESSION_MANAGER__' -Name PendingFileRenameOperations -ErrorAction SilentlyContinue
if ($renames) { $pending += '__SESSION_MANAGER__\PendingFileRenameOperations' }
$doc = [ordered]@{
  format = 'rmm-patch-install/1'; family = 'wua'; not_offered = $notOffered; results = $results
  reboot_required = $rebootRequired; reboot_pending = $pending
}
[System.IO.File]::WriteAllText($env:RMM_RESULT_PATH, ($doc | ConvertTo-Json -Compress -Depth 4))
$failed = @($results | Where-Object { $_.result_code -ne 2 -and $_.result_code -ne 3 })
Write-Output ("installed " + ($results.Count - $failed.Count) + " of " + $wanted.Count + " updates")
if ($notOffered.Count -gt 0 -or $failed.Count -gt 0) { exit 1 }
"""


def windows_install(ids: list[str]) -> str:
    """The install step of a Windows asset's job: its updates by KB (or update id)."""
    keys = ", ".join(scans.ps_quote(f"HKLM:\\{key}") for key in WINDOWS_REBOOT_KEYS)
    return (
        WINDOWS_INSTALL.replace("__IDS__", ", ".join(scans.ps_quote(i) for i in ids))
        .replace("__KEYS__", keys)
        .replace("__SESSION_MANAGER__", f"HKLM:\\{WINDOWS_SESSION_MANAGER}")
    )


def install_step(job: PatchInstallJob) -> tuple[str, str]:
    """(interpreter, script) that installs the job's exact versions on its asset's family."""
    if job.family == "wua":
        return "powershell", windows_install([version for _, version in job.packages])
    return "sh", f"set -eu\n{install_command(job.family, job.packages)}\n"


def render_patch(job: PatchInstallJob) -> list[registry.InstructionSpec]:
    wanted = [(name, version) for name, version in job.packages]
    interpreter, content = install_step(job)
    return [
        registry.InstructionSpec(
            asset=job.asset,
            interpreter=interpreter,
            content=content,
            timeout_seconds=3600,
            privileged=True,
            on_failure=registry.CONTINUE,
            reboot=REBOOT[job.patch_job.reboot_policy],
        ),
        scan_step(job.asset, wanted),
    ]


def prepare_patch(*, patch_job) -> registry.NewJob:
    """Each asset's job of a patch job: it installs as root, so it waits for a second person."""
    return registry.NewJob(
        fields={"patch_job": patch_job},
        requires_approval=True,
        names={"patch_job": str(patch_job.pk)},
        created={"reboot_policy": patch_job.reboot_policy, "scheduled_for": patch_job.scheduled_for.isoformat()},
    )


def patch_evidence(job: PatchInstallJob, inst, stored, result: dict, late: bool) -> dict:
    task, request = job.psa_task, job.patch_job
    return {
        "evidence_type": PATCH_RESULT,
        "job": _job(job, PATCH_KIND),
        "patch_job": {
            "id": request.pk,
            "scheduled_for": request.scheduled_for,
            "reboot_policy": request.reboot_policy,
            "approved_by": request.decided_by.get_username() if request.decided_by_id else None,
            "approved_at": request.decided_at,
        },
        "packages": job.packages,
        "step": "install" if inst.step == 0 else "rescan",
        "instruction": {**registry.signed_instruction(inst), "privileged": inst.privileged},
        "authority": {"psa_task_id": task.pk, "psa_case_id": task.case_id},
        "asset": {"id": job.asset_id, "hostname": job.asset.hostname, "site": job.site.name},
        "result": {**_result(inst, result, late), "structured_reboot": (result or {}).get("reboot")},
        "patch_state": _written(stored),
    }


def _describe_patch(job: PatchInstallJob) -> str:
    names = ", ".join(f"{name} {version}" for name, version in job.packages[:3])
    more = f" and {len(job.packages) - 3} more" if len(job.packages) > 3 else ""
    return f"patch {names}{more} on {job.asset.hostname}"


registry.register(
    registry.JobKind(
        name=PATCH_KIND,
        model=PatchInstallJob,
        prepare=prepare_patch,
        render=render_patch,
        judge=lambda inst, result: _judge_scan(inst, result) if inst.step == 1 else None,
        store_result=lambda job, inst, result: _ingest(job, inst, result, after_job=True) if inst.step == 1 else None,
        evidence_type=PATCH_RESULT,
        evidence_entity="patch_job",
        evidence_document=patch_evidence,
        describe=_describe_patch,
        card=lambda job: [
            ("Packages", ", ".join(f"{name}={version}" for name, version in job.packages)),
            ("Reboot policy", job.patch_job.reboot_policy),
            ("Privileged", "yes: installs as root"),
        ],
        select_related=(
            "patch_job__decided_by",
            "asset",
            "site",
            "psa_task__case",
            "requested_by",
            "decided_by",
        ),
        capability=CAPABILITY_STRUCTURED_RESULT,
        # a ring is released, and a job's install starts, only inside the site's maintenance window
        window=lambda batch, now: maintenance.window_at(batch.site_id, now),
    )
)
