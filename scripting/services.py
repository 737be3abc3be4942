"""Scripts as controlled artefacts, and script jobs on upstream authority."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from rmm import access, bulk
from rmm.authority import services as authority_services
from rmm.authority.models import PsaTask
from rmm.authority.services import authority_problem
from rmm.engine import services as engine
from rmm.engine.services import batches, kill_switches
from rmm.engine.states import JobStatus
from rmm.errors import Conflict, Forbidden, InvalidInput
from rmm.history import services as history
from rmm.inventory.models import Asset
from scripting.models import ApprovalStatus, Language, Script, ScriptJob

LANGUAGES = {choice.value for choice in Language}
MAX_SCRIPT_BYTES = 256 * 1024


def _require(user, capability: str, action: str, subject=None) -> None:
    if not access.can(user, capability):
        history.record_refusal(user, action, subject, reason=f"role may not {capability.replace('_', ' ')}")
        raise Forbidden(f"Your role may not {capability.replace('_', ' ')}.")


def create_script(
    user,
    *,
    name: str,
    language: str,
    content: str,
    requires_approval: bool = False,
    timeout_seconds: int | None = None,
    privileged: bool = False,
) -> Script:
    """A new version of ``name``: content never changes once written; new content, new version."""
    _require(user, "author_scripts", "script.create")
    name = (name or "").strip()
    if not name:
        raise InvalidInput("This field is required.", field="name")
    if language not in LANGUAGES:
        raise InvalidInput(f"Must be one of: {', '.join(sorted(LANGUAGES))}.", field="language")
    if not content or not content.strip():
        raise InvalidInput("A script needs content.", field="content")
    if len(content.encode()) > MAX_SCRIPT_BYTES:
        raise InvalidInput(f"At most {MAX_SCRIPT_BYTES} bytes.", field="content")
    if timeout_seconds is None:
        timeout_seconds = settings.RMM_DEFAULT_TIMEOUT_SECONDS
    if not 1 <= int(timeout_seconds) <= 24 * 3600:
        raise InvalidInput("Between 1 second and 24 hours.", field="timeout_seconds")
    for _attempt in range(5):
        try:
            with transaction.atomic():
                latest = Script.objects.filter(name=name).aggregate(v=Max("version"))["v"] or 0
                script = Script.objects.create(
                    name=name,
                    version=latest + 1,
                    language=language,
                    content=content,
                    sha256=hashlib.sha256(content.encode()).hexdigest(),
                    requires_approval=bool(requires_approval),
                    privileged=bool(privileged),
                    timeout_seconds=int(timeout_seconds),
                    author=user,
                )
                history.append(
                    user,
                    "script.created",
                    script,
                    payload={
                        "name": name,
                        "version": script.version,
                        "sha256": script.sha256,
                        "language": language,
                        "privileged": script.privileged,
                    },
                )
                return script
        except IntegrityError:
            continue  # another author took this version number; take the next
    raise Conflict("Too many concurrent versions of this script; try again.")


def _decide_script(script: Script, user, *, approve: bool, reason: str = "") -> Script:
    action = "script.approve" if approve else "script.reject"
    _require(user, "approve", action, script)
    engine.check_four_eyes(script, user, author_field="author", action=action)
    if approve and script.privileged and not user.has_perm("scripting.approve_privileged"):
        history.record_refusal(
            user, action, script, reason="privileged version needs the privileged-approval permission"
        )
        raise Forbidden("Approving a privileged script version needs the privileged-approval permission.")
    if not approve and not (reason or "").strip():
        raise InvalidInput("A rejection needs a reason.", field="reason")
    to = ApprovalStatus.APPROVED if approve else ApprovalStatus.REJECTED
    now = timezone.now()
    with transaction.atomic():
        # Conditional update: of two approvers acting at once, exactly one decision stands.
        won = Script.objects.filter(pk=script.pk, approval_status=ApprovalStatus.PENDING).update(
            approval_status=to, decided_by=user, decided_at=now, decision_reason=(reason or "").strip()
        )
        if not won:
            current = Script.objects.values_list("approval_status", flat=True).get(pk=script.pk)
            raise Conflict(f"This script version is already {current}.")
        history.append(
            user, f"script.{to}", script, payload={"name": script.name, "version": script.version, "reason": reason}
        )
    script.refresh_from_db()
    return script


def approve_script(script: Script, user) -> Script:
    return _decide_script(script, user, approve=True)


def reject_script(script: Script, user, reason: str) -> Script:
    return _decide_script(script, user, approve=False, reason=reason)


def _first_status(script: Script, task: PsaTask, user, site) -> tuple[str, str, dict]:
    """A new job waits for an approver when its version asks for one, or when its requester wrote
    the authority it cites and the site's policy wants a second person; else it is queued."""
    if authority_services.self_authorized(task, user, site):
        return JobStatus.AWAITING_APPROVAL, authority_services.SELF_AUTHORIZED, {"self_authorized": True}
    if script.requires_approval:
        return JobStatus.AWAITING_APPROVAL, "", {}
    return JobStatus.QUEUED, "", {}


def create_script_job(user, *, script_id, asset_id, psa_task_id) -> ScriptJob:
    """Law 1 lives here: no job row without approved, unexpired authority covering the asset."""
    _require(user, "request_jobs", "script_job.create")
    script = Script.objects.filter(pk=script_id).first() if script_id else None
    if script is None:
        raise InvalidInput("No such script.", field="script")
    if script.approval_status != ApprovalStatus.APPROVED:
        raise InvalidInput(f"This script version is {script.approval_status}, not approved.", field="script")
    sites = access.visible_sites(user)
    asset = Asset.objects.filter(pk=asset_id, site__in=sites).select_related("site").first() if asset_id else None
    if asset is None:
        raise InvalidInput("No such asset.", field="asset")
    task = (
        PsaTask.objects.select_related("case").filter(pk=psa_task_id, case__site__in=sites).first()
        if psa_task_id
        else None
    )
    # A task of a site the caller may not see is told as missing (Law 7); the history says which.
    told = None
    if psa_task_id and task is None and PsaTask.objects.filter(pk=psa_task_id).exists():
        problem, told = "the asset is outside the PSA case's site", "no such PSA task"
    elif psa_task_id and task is None:
        problem = "no such PSA task"
    else:
        problem = authority_problem(task, asset)  # "no PSA task given" when there is none
    if problem:
        history.record_refusal(
            user,
            "script_job.create",
            reason=f"no authority: {problem}",
            site_id=asset.site_id,
            payload={
                "script": str(script.pk),
                "asset": str(asset.pk),
                "psa_task_id": str(psa_task_id) if psa_task_id else None,
            },
        )
        raise InvalidInput(f"No authority: {told or problem}.", field="psa_task_id")
    kill_switches.refuse_if_engaged(asset, user, "script_job.create")
    status, reason, self_written = _first_status(script, task, user, asset.site)
    with history.refusals_recorded(), transaction.atomic():
        # Checked again under the history's lock, in the transaction that queues: a switch engaged
        # or authority withdrawn since the checks above is seen, one that commits later sees us.
        history.lock()
        _recheck_authority(user, task, [asset], {"script": str(script.pk), "asset": str(asset.pk)})
        kill_switches.refuse_if_engaged(asset, user, "script_job.create", under_lock=True)
        job = ScriptJob.objects.create(
            script=script,
            asset=asset,
            psa_task=task,
            site=asset.site,
            status=status,
            status_reason=reason,
            requested_by=user,
        )
        history.append(
            user,
            "job.created",
            job,
            site_id=asset.site_id,
            payload={
                "kind": "script",
                "status": status,
                "script": str(script.pk),
                "script_sha256": script.sha256,
                "asset": str(asset.pk),
                "psa_task_id": str(task.pk),
                "psa_case_id": str(task.case_id),
                **self_written,
            },
        )
        if status == JobStatus.QUEUED:
            engine.issue_instructions(job, user)
        engine.events.publish(job.site_id, engine.job_event(job))
    return job


MAX_BATCH_ASSETS = 50_000


def create_script_jobs(
    user, *, script_id, psa_task_id, asset_ids=None, site_name=None, plan: dict | None = None
) -> list[ScriptJob]:
    """One script on many assets (the listed ones, or every asset of a site): one job per asset.

    The rules of :func:`create_script_job`, checked once for the batch: approved script, one PSA
    task whose case's site holds every asset, no engaged kill switch. All jobs and their history
    are written in one transaction with the first wave's signed instructions; the task cluster
    signs the later waves once it commits (:func:`rmm.engine.services.queue_in_waves`). Waves are
    ``RMM_WAVE_SIZE`` instructions every ``RMM_WAVE_INTERVAL_SECONDS``; with a ``plan``, the batch
    is released ring by ring (:mod:`rmm.engine.services.batches`).
    """
    _require(user, "request_jobs", "script_job.create")
    plan = batches.check_plan(plan)
    script = Script.objects.filter(pk=script_id).first() if script_id else None
    if script is None:
        raise InvalidInput("No such script.", field="script")
    if script.approval_status != ApprovalStatus.APPROVED:
        raise InvalidInput(f"This script version is {script.approval_status}, not approved.", field="script")
    sites = access.visible_sites(user)
    if asset_ids is not None:
        wanted = list(dict.fromkeys(asset_ids))  # the caller's order is the order of the waves
        # Only the columns a job needs, unsorted (they go into a dict): a 10,000-asset batch reads
        # 10,000 of these (docs/performance.md).
        rows = Asset.objects.filter(pk__in=wanted, site__in=sites).only("id", "site_id").order_by()
        found = {asset.pk: asset for asset in rows}
        assets = [found[pk] for pk in wanted if pk in found]
        if len(assets) != len(wanted):
            raise InvalidInput(f"{len(wanted) - len(assets)} of the assets do not exist.", field="assets")
    elif site_name:
        assets = list(Asset.objects.filter(site__name=site_name, site__in=sites).only("id", "site_id"))
        if not assets:
            raise InvalidInput("No site of that name with assets that you may see.", field="site")
    else:
        raise InvalidInput("Name the assets or a site.", field="assets")
    if len(assets) > MAX_BATCH_ASSETS:
        raise InvalidInput(f"At most {MAX_BATCH_ASSETS} assets in one batch.", field="assets")
    task = (
        PsaTask.objects.select_related("case").filter(pk=psa_task_id, case__site__in=sites).first()
        if psa_task_id
        else None
    )
    outside = [asset for asset in assets if task is not None and asset.site_id != task.case.site_id]
    told = None  # as in create_script_job: a task the caller may not see is told as missing
    if psa_task_id and task is None:
        exists = PsaTask.objects.filter(pk=psa_task_id).exists()
        problem = "the asset is outside the PSA case's site" if exists else "no such PSA task"
        told = "no such PSA task"
    elif outside:
        problem = "the asset is outside the PSA case's site"
    else:
        problem = authority_problem(task, assets[0])  # status and expiry: the same for every asset
    if problem:
        history.record_refusal(
            user,
            "script_job.create",
            reason=f"no authority: {problem}",
            site_id=assets[0].site_id,
            payload={
                "script": str(script.pk),
                "assets": len(assets),
                "outside": [str(asset.pk) for asset in outside[:20]],
                "psa_task_id": str(psa_task_id) if psa_task_id else None,
            },
        )
        raise InvalidInput(f"No authority: {told or problem}.", field="psa_task_id")
    site = task.case.site
    switch = kill_switches.active_for_any(site.pk, [asset.pk for asset in assets])
    if switch is not None:
        history.record_refusal(
            user,
            "script_job.create",
            reason=f"kill switch engaged on {switch.target_label}",
            site_id=site.pk,
            payload={"kill_switch": str(switch.pk), "assets": len(assets)},
        )
        raise Forbidden(f"A kill switch is engaged on {switch.target_label}: {switch.reason}")
    status, reason, self_written = _first_status(script, task, user, site)
    jobs = [
        ScriptJob(
            script=script,
            asset=asset,
            psa_task=task,
            site=site,
            status=status,
            status_reason=reason,
            requested_by=user,
        )
        for asset in assets
    ]
    with history.refusals_recorded(), transaction.atomic():
        batches.assign(jobs, user, plan)
        bulk.insert_many(jobs)
        # Checked again under the history's lock, which the later waves take too, before the first
        # wave is signed for the agents found under it (rmm.engine.services.queue_in_waves).
        history.lock()
        _recheck_authority(user, task, assets, {"script": str(script.pk), "assets": len(assets)})
        switch = kill_switches.active_for_any(site.pk, [asset.pk for asset in assets])
        if switch is not None:
            raise history.Refused(
                Forbidden(f"A kill switch is engaged on {switch.target_label}: {switch.reason}"),
                user,
                "script_job.create",
                reason=f"kill switch engaged on {switch.target_label}",
                site_id=site.pk,
                payload={"kill_switch": str(switch.pk), "assets": len(assets)},
            )
        created = [
            history.Event(
                history.actor_of(user),
                "job.created",
                "scripting.scriptjob",
                str(job.pk),
                site.pk,
                {
                    "kind": "script",
                    "status": status,
                    "script": str(script.pk),
                    "script_sha256": script.sha256,
                    "asset": str(job.asset_id),
                    "psa_task_id": str(task.pk),
                    "psa_case_id": str(task.case_id),
                    **self_written,
                },
            )
            for job in jobs
        ]
        # The history last, in one append with the first ring's: every lease and result waits
        # for the history's lock until this commits.
        batches.start(jobs, user, history_before=created)
        # One console event for the batch, not one per job.
        engine.events.publish(
            site.pk,
            {"type": "job_batch", "kind": "script", "count": len(jobs), "status": status, "site": str(site.pk)},
        )
    return jobs


def _recheck_authority(user, task: PsaTask, assets: list, payload: dict) -> None:
    """Under the history's lock: the task and its case read again must still cover the assets."""
    current = PsaTask.objects.select_related("case").get(pk=task.pk)
    problem = authority_problem(current, assets[0])
    if problem is None and any(asset.site_id != current.case.site_id for asset in assets):
        problem = "the asset is outside the PSA case's site"
    if problem:
        raise history.Refused(
            InvalidInput(f"No authority: {problem}.", field="psa_task_id"),
            user,
            "script_job.create",
            reason=f"no authority: {problem}",
            site_id=assets[0].site_id,
            payload={**payload, "psa_task_id": str(task.pk)},
        )


def approve_script_job(job: ScriptJob, user) -> None:
    _require(user, "approve", "job.approve", job)
    engine.approve_job(job, user)


def reject_script_job(job: ScriptJob, user, reason: str) -> None:
    _require(user, "approve", "job.reject", job)
    engine.reject_job(job, user, reason)


def expire_pending_versions(now=None) -> int:
    """Versions left pending past the approval TTL are rejected, with the reason, by the system."""
    now = now or timezone.now()
    cutoff = now - timedelta(hours=settings.RMM_APPROVAL_TTL_HOURS)
    count = 0
    for script in Script.objects.filter(approval_status=ApprovalStatus.PENDING, created_at__lt=cutoff):
        reason = f"approval expired after {settings.RMM_APPROVAL_TTL_HOURS} h"
        with transaction.atomic():
            if Script.objects.filter(pk=script.pk, approval_status=ApprovalStatus.PENDING).update(
                approval_status=ApprovalStatus.REJECTED, decided_at=now, decision_reason=reason
            ):
                history.append("system", "script.rejected", script, payload={"reason": reason})
                count += 1
    return count
