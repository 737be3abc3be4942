"""Scheduled scans: a site's assets scanned every interval under a standing PSA task (the monitoring
agreement). No scan without authority: when that task (or its case) expires or is withdrawn, the
schedule stops and the history says why; an engaged kill switch on the site (or global) stops it too.

One periodic dispatcher (django-q2, every minute) rather than a django-q2 schedule per asset or per
site: 10,000 assets would be 10,000 rows of django-q2's schedule table to create, move and delete
as assets come and go, and a schedule per site would scan all its assets at one moment. Instead
each asset has its own moment in the interval (a hash of its id: rmm.engine.services.recurring), and
each tick scans the assets whose moment fell since the schedule's ``dispatched_until``: a site's
scans are spread evenly over the interval, and a tick missed (the cluster down) is caught up once.
"""

from __future__ import annotations

from datetime import datetime

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from patching.kind import SCAN_KIND
from patching.models import PatchInstallJob, PatchScanSchedule, ScanScheduleStatus
from rmm.access import roles as access
from rmm.authority.laws import site_authority_problem
from rmm.authority.models import PsaTask
from rmm.core.errors import Conflict, Forbidden, InvalidInput
from rmm.engine import services as engine
from rmm.engine.services import deciding, kill_switches, recurring
from rmm.engine.states import JobStatus
from rmm.history import services as history
from rmm.inventory.models import Asset

MIN_INTERVAL = 900  # 15 minutes
CREATE = "patch_scan_schedule.create"
ACTIVE_ALREADY = "This site has an active scan schedule: stop it first."


def create_schedule(user, *, site_name: str, psa_task_id, interval_seconds: int = 86400) -> PatchScanSchedule:
    """A standing scan schedule for a site, on a PSA task that authorises work on the whole site."""
    deciding.require_role(user, "request_jobs", CREATE)
    site = access.visible_sites(user).filter(name=site_name or "").first()
    if site is None:
        raise InvalidInput("No site of that name that you may see.", field="site")
    recurring.check_interval(interval_seconds, "interval_seconds", MIN_INTERVAL)
    task = PsaTask.objects.select_related("case").filter(pk=psa_task_id).first() if psa_task_id else None
    problem = site_authority_problem(task, site)
    if problem:
        history.record_refusal(
            user,
            CREATE,
            reason=f"no authority: {problem}",
            site_id=site.pk,
            payload={"psa_task_id": str(psa_task_id) if psa_task_id else None},
        )
        raise InvalidInput(f"No authority: {problem}.", field="psa_task_id")
    if PatchScanSchedule.objects.filter(site=site, status=ScanScheduleStatus.ACTIVE).exists():
        raise Conflict(ACTIVE_ALREADY, field="site")
    now = timezone.now()
    try:
        with transaction.atomic():  # the row and its history together, or neither
            schedule = PatchScanSchedule.objects.create(
                site=site,
                psa_task=task,
                interval_seconds=interval_seconds,
                created_by=user,
                created_at=now,
                dispatched_until=now,
            )
            history.append(
                user,
                "patch_scan_schedule.created",
                schedule,
                site_id=site.pk,
                payload={
                    "psa_task_id": str(task.pk),
                    "psa_case_id": str(task.case_id),
                    "interval_seconds": interval_seconds,
                },
            )
    except IntegrityError:  # another request made the site's active schedule meanwhile (the constraint)
        raise Conflict(ACTIVE_ALREADY, field="site") from None
    return schedule


def stop(actor, schedule: PatchScanSchedule, reason: str) -> PatchScanSchedule:
    """Stop a schedule, with the reason (a person's, its authority's end, a kill switch). Of two
    stops at once one wins; the other is a 409 (a conditional update)."""
    if not isinstance(actor, str):
        deciding.require_role(actor, "request_jobs", "patch_scan_schedule.stop", schedule, site_id=schedule.site_id)
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("Say why the schedule stops.", field="reason")
    if not _stop(actor, schedule, reason):
        raise Conflict("This schedule is stopped already.", field="status")
    schedule.refresh_from_db()
    return schedule


def _stop(actor, schedule: PatchScanSchedule, reason: str) -> bool:
    """Stop it if it is still active (a conditional update); False when something stopped it first,
    which the dispatcher takes as done rather than as an error that would end its tick."""
    with transaction.atomic():  # the stop and its history together, or neither
        stopped = PatchScanSchedule.objects.filter(pk=schedule.pk, status=ScanScheduleStatus.ACTIVE).update(
            status=ScanScheduleStatus.STOPPED,
            status_reason=reason[:2000],
            stopped_at=timezone.now(),
            stopped_by=None if isinstance(actor, str) else actor,
        )
        if stopped:
            history.append(
                actor, "patch_scan_schedule.stopped", schedule, site_id=schedule.site_id, payload={"reason": reason}
            )
    return bool(stopped)


def dispatch(schedule: PatchScanSchedule, now: datetime) -> int:
    """One tick of one schedule: stop it if its authority ended or a kill switch covers its site,
    else scan (in one engine batch) the assets whose moment has come; how many scans."""
    problem = site_authority_problem(schedule.psa_task, schedule.site, now)
    if problem:
        _stop("system", schedule, f"authority ended: {problem}")
        return 0
    switch = kill_switches.active_for(schedule.site_id, None)  # no asset: a switch on the whole site
    if switch is not None:
        _stop("system", schedule, f"kill switch engaged on {switch.target_label}: {switch.reason}")
        return 0
    # Claimed by a conditional update: two task workers ticking at once scan each asset once.
    # Active still: a schedule stopped since this tick read it scans nothing.
    if not PatchScanSchedule.objects.filter(
        pk=schedule.pk, status=ScanScheduleStatus.ACTIVE, dispatched_until=schedule.dispatched_until
    ).update(dispatched_until=now):
        return 0
    assets = Asset.objects.filter(site=schedule.site, retired_at__isnull=True).only("id", "site_id", "retired_at")
    interval, since = schedule.interval_seconds, schedule.dispatched_until
    chosen = [asset for asset in assets if recurring.is_due(recurring.offset(interval, asset.pk), interval, since, now)]
    if not chosen:
        return 0
    # An asset the engine would refuse (its own kill switch, an agent that cannot report a scan)
    # is left out (it would refuse the whole batch), as is one busy with its package manager; the
    # history's dispatch event counts them and says why each was skipped.
    found = recurring.creatable(SCAN_KIND, chosen, busy=_busy([asset.pk for asset in chosen]))
    scanned = [asset.pk for asset in found.ready]
    if scanned:
        try:
            engine.create_jobs(schedule.created_by, SCAN_KIND, psa_task_id=schedule.psa_task_id, asset_ids=scanned)
        except (InvalidInput, Forbidden, Conflict) as exc:  # the engine refused, and recorded why
            _stop("system", schedule, f"the engine refused its scans: {exc}")
            return 0
    PatchScanSchedule.objects.filter(pk=schedule.pk).update(scans_dispatched=F("scans_dispatched") + len(scanned))
    history.append(
        "system",
        "patch_scan_schedule.dispatched",
        schedule,
        site_id=schedule.site_id,
        payload={
            "scans": len(scanned),
            "under_kill_switch": found.count(recurring.KILL_SWITCH),
            "incapable": found.count(recurring.INCAPABLE),
            "busy": found.count(recurring.BUSY),
            "skipped": {str(pk): skip.reason for pk, skip in found.skipped.items()},
        },
    )
    return len(scanned)


def _busy(asset_ids: list) -> dict:
    """asset id -> why a scan now would race its package manager: a patch job released on it
    (installing, or about to; its own re-scan follows). It is scanned at its next moment instead."""
    installing = PatchInstallJob.objects.filter(
        asset_id__in=asset_ids, status__in=(JobStatus.QUEUED, JobStatus.RUNNING)
    ).values_list("asset_id", flat=True)
    return dict.fromkeys(installing, "a patch job is installing on it; its re-scan follows")


def dispatch_all(now: datetime | None = None) -> int:
    """Every active schedule's tick (django-q2, every minute); how many scans were created."""
    now = now or timezone.now()
    total = 0
    for schedule in PatchScanSchedule.objects.filter(status=ScanScheduleStatus.ACTIVE).select_related(
        "site", "psa_task__case", "created_by"
    ):
        total += dispatch(schedule, now)
    return total
