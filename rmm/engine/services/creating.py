"""Creating jobs of every kind: where each law that guards a new job row is applied, once.

For one asset or for many, alike: the caller's role, the sites it may see (Law 7), the PSA
task's authority over every asset (Law 1), kill switches (Law 6), the approval gate (the kind's
artefact asks for it, or the requester wrote the authority it cites and the site's policy wants
a second person), the history, and issuing. A kind supplies only what is its own
(:attr:`rmm.engine.registry.JobKind.prepare`: what the caller's parameters mean and each job row
holds). docs/security.md tells the order of the checks and why they are made twice.
"""

from __future__ import annotations

from django.db import transaction

from rmm.access import roles as access
from rmm.authority import laws as authority_services
from rmm.authority.models import PsaTask
from rmm.core import bulk
from rmm.core.errors import Conflict, Forbidden, InvalidInput
from rmm.engine import events, registry
from rmm.engine.services import batches, deciding, issuing, kill_switches, transitions
from rmm.engine.states import JobStatus
from rmm.history import services as history
from rmm.inventory.models import Agent, Asset

MAX_BATCH_ASSETS = 50_000
OUTSIDE = "the asset is outside the PSA case's site"
NO_TASK = "no such PSA task"


def create_job(user, kind: str, *, asset_id, psa_task_id, **params):
    """One job of ``kind`` on one asset, on the PSA task ``psa_task_id``'s authority; ``params``
    are the kind's own (:attr:`JobKind.prepare`). The batch path with one asset; its refusals
    and its console event name the asset."""
    return _create(user, registry.get(kind), psa_task_id, params, asset_ids=[asset_id] if asset_id else [], one=True)[0]


def create_jobs(user, kind: str, *, psa_task_id, asset_ids=None, site_name=None, plan=None, **params) -> list:
    """One job of ``kind`` per asset (the listed ones, in their order, or every asset of a site
    the caller may see), on one PSA task whose case's site holds them all, in one batch.

    The laws are checked once for the batch. All jobs and their history are written in one
    transaction with the first ring's signed instructions; later rings are released by the
    batch's ``plan`` (:mod:`rmm.engine.services.batches`; none: the global waves).
    """
    return _create(user, registry.get(kind), psa_task_id, params, asset_ids=asset_ids, site_name=site_name, plan=plan)


def _create(
    user, kind: registry.JobKind, psa_task_id, params: dict, *, asset_ids, site_name=None, one=False, plan=None
) -> list:
    action = f"{kind.name}_job.create"
    deciding.require_role(user, "request_jobs", action)
    plan = None if one else batches.check_plan(plan)
    new = kind.prepare(**params)
    sites = access.visible_sites(user)
    assets = _assets(sites, asset_ids, site_name, one)
    _refuse_if_retired(user, action, assets, one)
    task = (
        PsaTask.objects.select_related("case__site").filter(pk=psa_task_id, case__site__in=sites).first()
        if psa_task_id
        else None
    )
    _refuse_if_incapable(user, action, kind, assets, one)
    outside = [asset for asset in assets if task is not None and asset.site_id != task.case.site_id]
    told = None  # a task of a site the caller may not see is told as missing (Law 7); the history says which
    if psa_task_id and task is None:
        problem = OUTSIDE if PsaTask.objects.filter(pk=psa_task_id).exists() else NO_TASK
        told = NO_TASK
    else:
        # "no PSA task given" when there is none; status and expiry are the same for every asset
        problem = authority_services.authority_problem(task, assets[0]) or (OUTSIDE if outside else None)
    if problem:
        history.record_refusal(
            user,
            action,
            reason=f"no authority: {problem}",
            site_id=assets[0].site_id,
            payload={
                **_about(new, assets, one),
                **({} if one else {"outside": [str(asset.pk) for asset in outside[:20]]}),
                "psa_task_id": str(psa_task_id) if psa_task_id else None,
            },
        )
        raise InvalidInput(f"No authority: {told or problem}.", field="psa_task_id")
    site = task.case.site
    _refuse_if_switched(user, action, site.pk, assets, one)
    if kind.admit is not None:
        kind.admit(user, assets, new)
    status, reason, self_written = _first_status(new, task, user, site)
    decided = {"decided_by": new.approved.by, "decided_at": new.approved.at} if "approved_by" in self_written else {}
    jobs = [
        kind.model(
            **new.fields,
            asset=asset,
            psa_task=task,
            site=site,
            status=status,
            status_reason=reason,
            requested_by=user,
            **decided,
        )
        for asset in assets
    ]
    with history.refusals_recorded(), transaction.atomic():
        if not one:
            batches.assign(jobs, user, plan)
        bulk.insert_many(jobs)
        # Checked again under the history's lock, which the later waves take too, in the
        # transaction that queues: a switch engaged or authority withdrawn since the checks above
        # is seen, one that commits later sees these jobs (rmm.history.services.lock).
        history.lock()
        _recheck_authority(user, action, task, assets, _about(new, assets, one))
        _refuse_if_retired(user, action, assets, one, under_lock=True)
        _refuse_if_switched(user, action, site.pk, assets, one, under_lock=True)
        created = [
            history.Event(
                history.actor_of(user),
                "job.created",
                kind.model._meta.label_lower,
                str(job.pk),
                site.pk,
                {
                    "kind": kind.name,
                    "status": status,
                    **new.names,
                    **new.created,
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
        if not one:
            batches.start(jobs, user, history_before=created)
        elif status == JobStatus.QUEUED:
            issuing.queue_in_waves(jobs, user, history_before=created)
        else:
            history.append_many(created)
        if one:
            events.publish(site.pk, transitions.job_event(jobs[0]))
        else:  # one console event for the batch, not one per job
            events.publish(
                site.pk,
                {"type": "job_batch", "kind": kind.name, "count": len(jobs), "status": status, "site": str(site.pk)},
            )
    return jobs


def _refuse_if_incapable(user, action: str, kind: registry.JobKind, assets: list[Asset], one: bool) -> None:
    """An agent that does not report the kind's capability is never sent its job (one query)."""
    if not kind.capability:
        return
    capable = capable_assets(kind, [asset.pk for asset in assets])
    lacking = [asset for asset in assets if asset.pk not in capable]
    if not lacking:
        return
    reason = f"the agent does not report the {kind.capability} capability"
    history.record_refusal(
        user,
        action,
        reason=reason,
        site_id=lacking[0].site_id,
        payload={"assets": [str(asset.pk) for asset in lacking[:20]], "lacking": len(lacking)},
    )
    if one:
        raise InvalidInput(f"The asset's agent cannot do this: {reason}.", field="asset")
    raise InvalidInput(f"{len(lacking)} of the assets' agents cannot do this: {reason}.", field="assets")


def capable_assets(kind: registry.JobKind, asset_ids: list) -> set:
    """Of these assets, those whose agent (not revoked) reports the kind's capability; all of them
    when the kind asks for none (one query, or none)."""
    if not kind.capability:
        return set(asset_ids)
    return {
        asset_id
        for asset_id, capabilities in Agent.objects.filter(asset_id__in=asset_ids, revoked_at__isnull=True)
        .order_by()
        .values_list("asset_id", "capabilities")
        if kind.capability in capabilities.split(",")
    }


def _refuse_if_retired(user, action: str, assets: list[Asset], one: bool, *, under_lock: bool = False) -> None:
    """A retired asset is no job's target (409, recorded). ``under_lock``: read again inside the
    transaction that queues, where a retirement that committed meanwhile is seen (it appends
    its history under the same lock)."""
    if under_lock:
        retired = set(
            Asset.objects.filter(pk__in=[asset.pk for asset in assets], retired_at__isnull=False)
            .order_by()
            .values_list("pk", flat=True)
        )
        found = [asset for asset in assets if asset.pk in retired]
    else:
        found = [asset for asset in assets if asset.retired_at is not None]
    if not found:
        return
    refused = history.Refused(
        Conflict(
            "The asset is retired." if one else f"{len(found)} of the assets are retired.",
            field="asset" if one else "assets",
        ),
        user,
        action,
        reason="asset retired",
        site_id=found[0].site_id,
        payload={"assets": [str(asset.pk) for asset in found[:20]], "retired": len(found)},
    )
    if under_lock:
        raise refused
    history.record_refusal(user, action, **refused.refusal)
    raise refused.error


def _assets(sites, asset_ids, site_name, one: bool) -> list[Asset]:
    """The assets named, of the sites the caller may see, in the caller's order (the order of
    the waves). Only the columns a job needs, unsorted: a 10,000-asset batch reads 10,000 of
    these (docs/performance.md)."""
    if asset_ids:
        wanted = list(dict.fromkeys(asset_ids))
        rows = Asset.objects.filter(pk__in=wanted, site__in=sites).only("id", "site_id", "retired_at").order_by()
        found = {asset.pk: asset for asset in rows}
        assets = [found[pk] for pk in wanted if pk in found]
        if len(assets) != len(wanted):
            if one:
                raise InvalidInput("No such asset.", field="asset")
            raise InvalidInput(f"{len(wanted) - len(assets)} of the assets do not exist.", field="assets")
    elif one:
        raise InvalidInput("No such asset.", field="asset")
    elif site_name:
        # a site's assets are its active ones: a retired asset is no job's target
        assets = list(
            Asset.objects.filter(site__name=site_name, site__in=sites, retired_at__isnull=True).only(
                "id", "site_id", "retired_at"
            )
        )
        if not assets:
            raise InvalidInput("No site of that name with assets that you may see.", field="site")
    else:
        raise InvalidInput("Name the assets or a site.", field="assets")
    if len(assets) > MAX_BATCH_ASSETS:
        raise InvalidInput(f"At most {MAX_BATCH_ASSETS} assets in one batch.", field="assets")
    return assets


def _about(new: registry.NewJob, assets: list, one: bool) -> dict:
    """How a refusal names the work: what runs, and the asset (or how many)."""
    return {**new.names, **_assets_named(assets, one)}


def _assets_named(assets: list, one: bool) -> dict:
    return {"asset": str(assets[0].pk)} if one else {"assets": len(assets)}


def _refuse_if_switched(user, action: str, site_id, assets: list, one: bool, *, under_lock: bool = False) -> None:
    """Law 6: no new work under an engaged kill switch. ``under_lock``: inside the transaction
    that queues, raised as :class:`history.Refused` (recorded once it has rolled back)."""
    if one:
        switch = kill_switches.active_for(site_id, assets[0].pk)
    else:
        switch = kill_switches.active_for_any(site_id, [asset.pk for asset in assets])
    if switch is None:
        return
    refused = history.Refused(
        Forbidden(f"A kill switch is engaged on {switch.target_label}: {switch.reason}"),
        user,
        action,
        reason=f"kill switch engaged on {switch.target_label}",
        site_id=site_id,
        payload={"kill_switch": str(switch.pk), **_assets_named(assets, one)},
    )
    if under_lock:
        raise refused
    history.record_refusal(user, action, **refused.refusal)
    raise refused.error


def _first_status(new: registry.NewJob, task: PsaTask, user, site) -> tuple[str, str, dict]:
    """A new job waits for an approver when its requester wrote the authority it cites and the
    site's policy wants a second person, or when the kind's artefact asks for one; else it is
    queued. A second person's decision that already covers it (``new.approved``, never the
    requester's own: Law 8) queues it past both gates."""
    if new.approved is not None and new.approved.by is not None and new.approved.by.pk != user.pk:
        return (
            JobStatus.QUEUED,
            "",
            {"approved_by": new.approved.by.get_username(), "approval": new.approved.covers},
        )
    if authority_services.self_authorized(task, user, site):
        return JobStatus.AWAITING_APPROVAL, authority_services.SELF_AUTHORIZED, {"self_authorized": True}
    if new.requires_approval:
        return JobStatus.AWAITING_APPROVAL, "", {}
    return JobStatus.QUEUED, "", {}


def _recheck_authority(user, action: str, task: PsaTask, assets: list, payload: dict) -> None:
    """Under the history's lock: the task and its case read again must still cover the assets."""
    current = PsaTask.objects.select_related("case").get(pk=task.pk)
    problem = authority_services.authority_problem(current, assets[0])
    if problem is None and any(asset.site_id != current.case.site_id for asset in assets):
        problem = OUTSIDE
    if problem:
        raise history.Refused(
            InvalidInput(f"No authority: {problem}.", field="psa_task_id"),
            user,
            action,
            reason=f"no authority: {problem}",
            site_id=assets[0].site_id,
            payload={**payload, "psa_task_id": str(task.pk)},
        )
