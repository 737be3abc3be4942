"""Scans and patch jobs: the only place that creates, decides and releases them. The engine applies
every law to their per-asset jobs (authority, sites, kill switches, approval, throttles, rings,
history, evidence); this module says what a patch job targets and when it is released.

A patch job (seed C ``patch_jobs``) is one request: its assets' missing patches (the catalog ids
given, or every missing one of ``min_severity`` or higher), one engine batch of one ``patch`` job
per asset that misses any. Its jobs install as root, so they all wait for a second person, who
decides the whole request at once (:func:`approve` / :func:`reject`). An approved request is
released at ``scheduled_for``: at once when that has come, else by a django-q2 schedule then.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from patching import windows
from patching.kind import PATCH_KIND, SCAN_KIND
from patching.models import (
    AssetPatch,
    AssetPatchScan,
    AssetPatchStatus,
    PatchCatalog,
    PatchInstallJob,
    PatchJob,
    PatchJobStatus,
    PatchScanJob,
    RebootPolicy,
    Severity,
)
from rmm.access import roles as access
from rmm.authority.models import PsaTask
from rmm.core.errors import Conflict, Forbidden, InvalidInput
from rmm.engine import services as engine
from rmm.engine.models import Batch
from rmm.engine.services import deciding
from rmm.engine.states import JobStatus
from rmm.history import services as history
from rmm.inventory.models import Agent, Asset
from rmm_agent.protocol import CAPABILITY_REBOOT

P = AssetPatchStatus
TARGETED = (P.MISSING, P.FAILED)  # what a patch job installs: missing, or failed before
CLOCK_SKEW = timedelta(seconds=60)
PRIVILEGED = "scripting.approve_privileged"


def create_scans(user, *, psa_task_id, asset_ids=None, site_name=None, plan=None) -> list[PatchScanJob]:
    """One read-only scan job per asset (the listed ones, or every asset of a site), in one batch,
    on the PSA task's authority (the engine refuses and records anything else)."""
    return engine.create_jobs(
        user, SCAN_KIND, psa_task_id=psa_task_id, asset_ids=asset_ids, site_name=site_name, plan=plan
    )


def _check_request(patches, min_severity, scheduled_for: datetime | None, reboot_policy: str, now: datetime):
    if reboot_policy not in RebootPolicy.values:
        raise InvalidInput(f"Must be one of: {', '.join(RebootPolicy.values)}.", field="reboot_policy")
    scheduled_for = scheduled_for or now
    if scheduled_for < now - CLOCK_SKEW:
        raise InvalidInput("In the past: a patch job is scheduled for now or later.", field="scheduled_for")
    ttl = timedelta(hours=settings.RMM_APPROVAL_TTL_HOURS)
    if scheduled_for > now + ttl:
        raise InvalidInput(
            f"More than {settings.RMM_APPROVAL_TTL_HOURS} h ahead: its jobs' approval would expire before it.",
            field="scheduled_for",
        )
    if bool(patches) == (min_severity is not None):
        raise InvalidInput("Give either patches (catalog ids) or min_severity.", field="patches")
    severity = None
    if min_severity is not None:
        try:
            severity = Severity.named(min_severity)
        except KeyError:
            raise InvalidInput(
                f"Must be one of: {', '.join(s.label for s in Severity)}.", field="min_severity"
            ) from None
    entries = []
    if patches:
        wanted = list(dict.fromkeys(patches))
        entries = list(PatchCatalog.objects.filter(pk__in=wanted))
        if len(entries) != len(wanted):
            raise InvalidInput(f"{len(wanted) - len(entries)} of the patches are not in the catalog.", field="patches")
    return scheduled_for, severity, entries


def _targets(user, asset_ids, site_name, entries, severity) -> dict:
    """asset id -> [(product, version, catalog id)] of its rows a patch job would install, among
    the assets the caller may see (one query)."""
    rows = AssetPatch.objects.filter(status__in=TARGETED, asset__site__in=access.visible_sites(user))
    if asset_ids:
        rows = rows.filter(asset_id__in=asset_ids)
    else:
        rows = rows.filter(asset__site__name=site_name, asset__retired_at__isnull=True)
    rows = rows.filter(patch__in=entries) if entries else rows.filter(patch__severity__gte=severity)
    targets: dict = {}
    for asset_id, product, version, patch_pk in rows.values_list(
        "asset_id", "patch__product", "patch__patch_id", "patch_id"
    ).order_by("asset_id", "patch__product"):
        targets.setdefault(asset_id, {})[product] = (product, version, patch_pk)  # one version per package
    return {asset_id: sorted(found.values()) for asset_id, found in targets.items()}


def create_patch_job(
    user,
    *,
    psa_task_id,
    asset_ids=None,
    site_name=None,
    patches=None,
    min_severity=None,
    scheduled_for: datetime | None = None,
    reboot_policy: str = RebootPolicy.IF_REQUIRED,
    plan: dict | None = None,
) -> PatchJob:
    """A patch job over the assets' missing patches; its per-asset jobs await a second person."""
    now = timezone.now()
    deciding.require_role(user, "request_jobs", "patch_job.create")
    scheduled_for, severity, entries = _check_request(patches, min_severity, scheduled_for, reboot_policy, now)
    if not asset_ids and not site_name:
        raise InvalidInput("Name the assets or a site.", field="assets")
    targets = _targets(user, asset_ids, site_name, entries, severity)
    if asset_ids:
        visible = set(
            Asset.objects.filter(pk__in=asset_ids, site__in=access.visible_sites(user)).values_list("pk", flat=True)
        )
        lacking = [pk for pk in asset_ids if pk in visible and pk not in targets]
        if lacking:
            raise InvalidInput(
                f"{len(lacking)} of the assets miss none of these patches (as their last scan reported).",
                field="assets",
            )
        chosen = list(asset_ids)  # the engine refuses, and records, an asset the caller may not see
    else:
        chosen = list(targets)
    if not chosen:
        raise InvalidInput("No asset misses these patches (as their last scans reported).", field="patches")
    if reboot_policy != RebootPolicy.NEVER:
        _refuse_unable_to_reboot(user, chosen)
    families = dict(AssetPatchScan.objects.filter(asset_id__in=chosen).values_list("asset_id", "family"))
    task = PsaTask.objects.filter(pk=psa_task_id).first() if psa_task_id else None
    request = PatchJob.objects.create(
        psa_task=task,
        psa_case_id=task.case_id if task else None,
        site_id=task.case.site_id if task else None,
        scheduled_for=scheduled_for,
        reboot_policy=reboot_policy,
        status=PatchJobStatus.AWAITING_APPROVAL,
        min_severity=severity,
        requested_by=user,
    )
    try:
        jobs = engine.create_jobs(
            user, PATCH_KIND, psa_task_id=psa_task_id, asset_ids=chosen, plan=plan, patch_job=request
        )
    except Exception:
        PatchJob.objects.filter(pk=request.pk).delete()
        raise
    with transaction.atomic():
        for job in jobs:
            job.packages = [[product, version] for product, version, _ in targets.get(job.asset_id, [])]
            job.family = families.get(job.asset_id, "dpkg")
        PatchInstallJob.objects.bulk_update(jobs, ["packages", "family"], batch_size=1000)
        request.batch_id = jobs[0].batch_id
        request.save(update_fields=["batch"])
        if entries:
            request.patches.set(entries)
        history.append(
            user,
            "patch_job.created",
            request,
            site_id=request.site_id,
            payload={
                "psa_task_id": str(task.pk),
                "psa_case_id": str(task.case_id),
                "assets": len(jobs),
                "patches": [str(entry.pk) for entry in entries],
                "min_severity": min_severity,
                "scheduled_for": scheduled_for.isoformat(),
                "reboot_policy": reboot_policy,
                "batch": str(request.batch_id),
            },
        )
    return request


def _refuse_unable_to_reboot(user, asset_ids) -> None:
    """A reboot policy other than never needs agents that can reboot their endpoint."""
    able = set(
        Agent.objects.filter(
            asset_id__in=asset_ids, revoked_at__isnull=True, capabilities__contains=CAPABILITY_REBOOT
        ).values_list("asset_id", flat=True)
    )
    unable = [pk for pk in asset_ids if pk not in able]
    if unable:
        raise InvalidInput(
            f"{len(unable)} of the assets' agents cannot reboot their endpoint: use reboot_policy never.",
            field="reboot_policy",
        )


def _decide(user, request: PatchJob, action: str) -> None:
    deciding.require_role(user, "approve", action, request, site_id=request.site_id)
    deciding.check_four_eyes(request, user, author_field="requested_by", action=action)
    if action == "patch_job.approve" and not user.has_perm(PRIVILEGED):
        history.record_refusal(user, action, request, reason="may not approve privileged work", site_id=request.site_id)
        raise Forbidden("Patch jobs install as root: approving them needs the privileged approval permission.")


def _claim(user, request: PatchJob, status: str, now: datetime, action: str) -> None:
    """Law 8: of two approvers acting at once, one decides (a conditional update)."""
    decided = PatchJob.objects.filter(pk=request.pk, status=PatchJobStatus.AWAITING_APPROVAL).update(
        status=status, decided_by=user, decided_at=now
    )
    if not decided:
        current = PatchJob.objects.get(pk=request.pk).status
        history.record_refusal(user, action, request, reason=f"already {current}", site_id=request.site_id)
        raise Conflict(f"This patch job is {current}: it awaits no decision.", field="status")
    request.status, request.decided_by, request.decided_at = status, user, now


def approve(user, request: PatchJob) -> PatchJob:
    """A second person approves the whole request: released now if its time has come, else at
    ``scheduled_for`` by the task cluster."""
    _decide(user, request, "patch_job.approve")
    now = timezone.now()
    at = windows.next_release(request.site_id, max(request.scheduled_for, now))
    due = at <= now
    with transaction.atomic():
        _claim(user, request, PatchJobStatus.RELEASED if due else PatchJobStatus.SCHEDULED, now, "patch_job.approve")
        history.append(
            user,
            "patch_job.approved",
            request,
            site_id=request.site_id,
            payload={"scheduled_for": request.scheduled_for.isoformat(), "released": due},
        )
        if not due:
            if at > request.scheduled_for:
                _hold(request, at)
            transaction.on_commit(lambda: _schedule(request, at), robust=True)
    if due:
        release(request)
    return request


def _hold(request: PatchJob, until: datetime) -> None:
    """Due, but the site's maintenance window is closed: held until it opens, and said so."""
    reason = f"held until the maintenance window opens at {until.isoformat()}"
    PatchJob.objects.filter(pk=request.pk).update(held_until=until, status_reason=reason)
    request.held_until, request.status_reason = until, reason
    history.append("system", "patch_job.held", request, site_id=request.site_id, payload={"until": until.isoformat()})


def _schedule(request: PatchJob, at: datetime) -> None:
    from django_q.models import Schedule

    Schedule.objects.update_or_create(
        name=f"patch job {request.pk}",
        defaults={
            "func": "patching.tasks.release_patch_job",
            "args": repr(str(request.pk)),
            "schedule_type": Schedule.ONCE,
            "next_run": at,
        },
    )


def release(request: PatchJob) -> int:
    """Approve the request's per-asset jobs in the approver's name (the engine re-checks authority
    and kill switches for each, and releases the batch's rings) and mark their patches
    ``installing``. Returns how many were queued; a job the engine refuses stays awaiting, its
    refusal recorded, and the request says why."""
    approver = request.decided_by
    jobs = list(
        PatchInstallJob.objects.filter(patch_job=request, status=JobStatus.AWAITING_APPROVAL).select_related(
            "patch_job", "asset", "site", "psa_task__case", "requested_by"
        )
    )
    queued, problems = [], []
    for job in jobs:
        try:
            deciding.approve_job(job, approver)
            queued.append(job)
        except (Conflict, Forbidden, InvalidInput) as exc:
            problems.append(f"{job.asset.hostname}: {exc}")
    with transaction.atomic():
        for job in queued:
            pairs = {(product, version) for product, version in job.packages}
            if not pairs:
                continue
            AssetPatch.objects.filter(
                asset_id=job.asset_id,
                status__in=TARGETED,
                patch__product__in={product for product, _ in pairs},
                patch__patch_id__in={version for _, version in pairs},
            ).update(status=P.INSTALLING)
        # the next scan of these assets reads their state anew, whatever it reports
        AssetPatchScan.objects.filter(asset_id__in=[job.asset_id for job in queued]).update(digest="")
        reason = "; ".join(problems)[:2000]
        PatchJob.objects.filter(pk=request.pk).update(status=PatchJobStatus.RELEASED, status_reason=reason)
        request.status, request.status_reason = PatchJobStatus.RELEASED, reason
        history.append(
            "system" if approver is None else approver,
            "patch_job.released",
            request,
            site_id=request.site_id,
            payload={"queued": len(queued), "refused": len(problems)},
        )
    return len(queued)


def release_due(request_id, now: datetime | None = None) -> int:
    """The schedule's call at ``scheduled_for`` (or when the maintenance window opens): a request
    still scheduled is released if its site's window is open now, else held until it opens."""
    now = now or timezone.now()
    request = PatchJob.objects.filter(pk=request_id, status=PatchJobStatus.SCHEDULED).first()
    if request is None:
        return 0
    at = windows.next_release(request.site_id, max(request.scheduled_for, now))
    if at > now:
        with transaction.atomic():
            if at != request.held_until and at > request.scheduled_for:
                _hold(request, at)
            transaction.on_commit(lambda: _schedule(request, at), robust=True)
        return 0
    # Claimed by a conditional update: a schedule run twice (two task workers) releases it once.
    if not PatchJob.objects.filter(pk=request_id, status=PatchJobStatus.SCHEDULED).update(
        status=PatchJobStatus.RELEASED, held_until=None
    ):
        return 0
    return release(PatchJob.objects.select_related("decided_by").get(pk=request_id))


def reject(user, request: PatchJob, reason: str) -> PatchJob:
    """A second person rejects the whole request, with the reason: none of its jobs runs."""
    _decide(user, request, "patch_job.reject")
    if not (reason or "").strip():
        raise InvalidInput("A rejection needs a reason.", field="reason")
    now = timezone.now()
    with transaction.atomic():
        _claim(user, request, PatchJobStatus.REJECTED, now, "patch_job.reject")
        PatchJob.objects.filter(pk=request.pk).update(status_reason=reason.strip())
        history.append(user, "patch_job.rejected", request, site_id=request.site_id, payload={"reason": reason.strip()})
    for job in PatchInstallJob.objects.filter(patch_job=request, status=JobStatus.AWAITING_APPROVAL):
        try:
            deciding.reject_job(job, user, reason)
        except Conflict:
            continue  # decided meanwhile
    return request


def status_of(request: PatchJob, batch: Batch | None) -> str:
    """The request's status: its decision, and once released its batch's."""
    if request.status == PatchJobStatus.RELEASED and batch is not None:
        return batch.status
    return request.status


def progress(request: PatchJob) -> dict[str, int]:
    """How many of its per-asset jobs are in each status (one query)."""
    return dict(
        PatchInstallJob.objects.filter(patch_job=request)
        .values_list("status")
        .annotate(n=Count("pk"))
        .order_by()
        .values_list("status", "n")
    )
