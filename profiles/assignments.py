"""Assignments of a profile to an asset or a whole site (seed B ``asset_configuration_profiles``):
the only writers of that table. An assignment cites the PSA task that authorises its audits and
enforcement (Law 1, the engine's own law: :mod:`rmm.authority.laws`); one whose profile revision
has enforce-mode items waits for a second person (Law 8) before its drift may be enforced.

Not an artefact kind (:mod:`rmm.artefacts`): an artefact is an immutable version decided once,
site-less, whose author alone is refused; an assignment belongs to a site, returns to awaiting
approval on each new revision or change, and is refused to two people (its requester and the
revision's author). Its decisions live here, beside the same laws.
"""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from profiles import services as profile_services
from profiles.models import (
    AssetConfigurationProfile,
    AssignmentStatus,
    ConfigurationProfile,
    ConfigurationProfileRevision,
    EnforcementMode,
)
from rmm.access import roles as access
from rmm.authority import laws
from rmm.authority.models import AuthorityStatus, PsaTask
from rmm.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from rmm.engine import services as engine
from rmm.engine.services import recurring
from rmm.history import services as history
from rmm.inventory.models import Asset, Site

S = AssignmentStatus
LIVE = (S.ACTIVE, S.AWAITING_APPROVAL)  # audited; stopped and rejected ones are not
DEFAULT_INTERVAL = 86_400
MIN_INTERVAL, MAX_INTERVAL = 300, 30 * 86_400
NO_TASK = "no such PSA task"


def site_id_of(assignment: AssetConfigurationProfile):
    """The site an assignment belongs to: its site's, or its asset's."""
    return assignment.site_id if assignment.site_id else assignment.asset.site_id


def enforcement_approved(assignment: AssetConfigurationProfile) -> bool:
    """May drift on this assignment's enforce-mode items be enforced? Only when a second person
    approved the profile's current revision for it and it is active; otherwise drift is reported."""
    return (
        assignment.status == S.ACTIVE
        and assignment.approved_revision_id is not None
        and assignment.approved_revision_id == assignment.profile.current_revision_id
    )


def _enforces(revision_id) -> bool:
    return ConfigurationProfileRevision.objects.filter(
        pk=revision_id, items__enforcement_mode=EnforcementMode.ENFORCE
    ).exists()


def _interval(value) -> int:
    if value is None:
        return DEFAULT_INTERVAL
    return recurring.check_interval(value, "audit_interval_seconds", MIN_INTERVAL, MAX_INTERVAL)


def _authority_problem(task: PsaTask | None, asset: Asset | None, site: Site | None, now=None) -> str | None:
    """Law 1, the engine's own, for an asset or for a whole site."""
    if asset is not None:
        return laws.authority_problem(task, asset, now)
    return laws.site_authority_problem(task, site, now)


def _task(user, action: str, psa_task_id, asset, site, subject=None) -> PsaTask:
    """The PSA task, when it authorises work on the asset or the site; else a
    refusal, recorded, answered 400 on ``psa_task_id``. A task of a site the caller may not see is
    told as missing; the history says which."""
    task = (
        PsaTask.objects.select_related("case").filter(pk=psa_task_id, case__site__in=access.visible_sites(user)).first()
    )
    told = problem = None
    if task is None:
        told = NO_TASK
        problem = NO_TASK if not PsaTask.objects.filter(pk=psa_task_id).exists() else "the PSA task is of another site"
    else:
        problem = _authority_problem(task, asset, site)
    if problem:
        history.record_refusal(
            user,
            action,
            subject,
            reason=f"no authority: {problem}",
            site_id=asset.site_id if asset else site.pk,
            payload={"psa_task_id": str(psa_task_id)},
        )
        raise InvalidInput(f"No authority: {told or problem}.", field="psa_task_id")
    return task


def _target(user, action: str, asset_id, site_id) -> tuple[Asset | None, Site | None]:
    """The asset or the site, exactly one, of the caller's sites (else 404, as if it did not exist;
    one that exists elsewhere is recorded). A retired asset is refused (409, recorded)."""
    if bool(asset_id) == bool(site_id):
        raise InvalidInput("Name an asset or a site: exactly one.", field="asset")
    sites = access.visible_sites(user)
    model, pk, field = (Asset, asset_id, "asset") if asset_id else (Site, site_id, "site")
    found = model.objects.filter(pk=pk, **({"site__in": sites} if model is Asset else {"pk__in": sites})).first()
    if found is None:
        if model.objects.filter(pk=pk).exists():
            history.record_refusal(user, action, reason=f"{field} outside the caller's sites", payload={field: str(pk)})
        raise NotFound(f"No such {field}.", field=field)
    if model is Asset and found.retired_at is not None:
        history.record_refusal(user, action, found, reason="asset retired", site_id=found.site_id)
        raise Conflict("The asset is retired.", field="asset")
    return (found, None) if model is Asset else (None, found)


def create_assignment(
    user, *, profile_id, psa_task_id, asset_id=None, site_id=None, audit_interval_seconds=None
) -> AssetConfigurationProfile:
    """Assign a profile to an asset or a site under a PSA task that covers it. It is active at
    once, or awaits a second person's approval when the profile's current revision enforces."""
    action = "profile_assignment.create"
    engine.require_role(user, profile_services.CAPABILITY, action)
    profile = ConfigurationProfile.objects.filter(pk=profile_id).first()
    if profile is None:
        raise InvalidInput("No such profile.", field="profile")
    asset, site = _target(user, action, asset_id, site_id)
    where = asset.site_id if asset else site.pk
    interval = _interval(audit_interval_seconds)
    task = _task(user, action, psa_task_id, asset, site)
    with transaction.atomic():
        # The profile's row lock orders this with a new revision (revise_profile takes it too).
        locked = ConfigurationProfile.objects.select_for_update().get(pk=profile.pk)
        if AssetConfigurationProfile.objects.filter(profile=locked, asset=asset, site=site, status__in=LIVE).exists():
            raise Conflict(f"The profile is already assigned to this {'asset' if asset else 'site'}.", field="profile")
        waits = _enforces(locked.current_revision_id)
        assignment = AssetConfigurationProfile.objects.create(
            profile=locked,
            asset=asset,
            site=site,
            psa_task=task,
            status=S.AWAITING_APPROVAL if waits else S.ACTIVE,
            status_reason="enforce-mode items wait for a second person's approval" if waits else "",
            audit_interval_seconds=interval,
            requested_by=user,
        )
        history.append(
            user,
            "profile_assignment.created",
            assignment,
            site_id=where,
            payload={
                "profile": str(locked.pk),
                "revision": locked.current_revision.revision,
                "asset": str(asset.pk) if asset else None,
                "site": str(site.pk) if site else None,
                "psa_task_id": str(task.pk),
                "psa_case_id": str(task.case_id),
                "status": assignment.status,
                "audit_interval_seconds": interval,
            },
        )
    return assignment


def _refuse_own(assignment: AssetConfigurationProfile, revision: ConfigurationProfileRevision, user, action: str):
    """Law 8: neither whoever requested the assignment (or its last change) nor whoever wrote the
    profile's current revision decides it."""
    for author_id, why in (
        (assignment.requested_by_id, "self-approval: requested the assignment"),
        (revision.created_by_id, "self-approval: wrote the profile's current revision"),
    ):
        if author_id == user.pk:
            history.record_refusal(
                user,
                action,
                assignment,
                reason=why,
                site_id=site_id_of(assignment),
                payload={"revision": revision.revision},
            )
            raise Forbidden("You may not approve or reject your own work (the assignment or the profile's revision).")


def _require_site(user, site_id) -> None:
    """Views find assignments among the caller's sites; other callers (the admin) are held to them too."""
    if not access.may_see_site(user, site_id):
        raise NotFound("Not found.")


def _decision_checks(assignment: AssetConfigurationProfile, user, action: str) -> ConfigurationProfileRevision:
    """Role, the caller's sites, four eyes, then the state; the revision the decision is about."""
    where = site_id_of(assignment)
    engine.require_role(user, "approve", action, assignment, site_id=where)
    _require_site(user, where)
    revision = ConfigurationProfile.objects.select_related("current_revision").get(pk=assignment.profile_id)
    revision = revision.current_revision
    _refuse_own(assignment, revision, user, action)
    if assignment.status != S.AWAITING_APPROVAL:
        raise Conflict(f"This assignment is {assignment.get_status_display()}, not awaiting approval.")
    return revision


def _decide(assignment, user, revision, to: str, reason: str, **fields) -> AssetConfigurationProfile:
    """Of two approvers acting at once, one decision stands (a conditional update), and only for
    the revision they looked at (under the profile's lock, which a new revision takes)."""
    with transaction.atomic():
        locked = ConfigurationProfile.objects.select_for_update().get(pk=assignment.profile_id)
        if locked.current_revision_id != revision.pk:
            raise Conflict("The profile was revised meanwhile: look at its new revision first.")
        won = AssetConfigurationProfile.objects.filter(pk=assignment.pk, status=S.AWAITING_APPROVAL).update(
            status=to,
            status_reason=reason,
            decided_by=user,
            decided_at=timezone.now(),
            updated_at=timezone.now(),
            **fields,
        )
        if not won:
            raise Conflict("This assignment was decided meanwhile.")
        history.append(
            user,
            f"profile_assignment.{'approved' if to == S.ACTIVE else 'rejected'}",
            assignment,
            site_id=site_id_of(assignment),
            payload={"revision": revision.revision, "reason": reason},
        )
    assignment.refresh_from_db()
    return assignment


def approve_assignment(assignment: AssetConfigurationProfile, user) -> AssetConfigurationProfile:
    """A second person approves enforcement of the profile's current revision on this assignment.
    Its PSA task must still authorise it (Law 1 holds when work becomes possible)."""
    action = "profile_assignment.approve"
    revision = _decision_checks(assignment, user, action)
    task = PsaTask.objects.select_related("case").get(pk=assignment.psa_task_id)
    problem = _authority_problem(task, assignment.asset if assignment.asset_id else None, assignment.site)
    if problem:
        history.record_refusal(
            user,
            action,
            assignment,
            reason=f"no authority: {problem}",
            site_id=site_id_of(assignment),
            payload={"psa_task_id": str(assignment.psa_task_id)},
        )
        raise Conflict(f"No authority: {problem}.", field="psa_task_id")
    return _decide(assignment, user, revision, S.ACTIVE, "", approved_revision=revision)


def reject_assignment(assignment: AssetConfigurationProfile, user, reason: str) -> AssetConfigurationProfile:
    """A second person refuses enforcement of the profile's current revision on this assignment."""
    revision = _decision_checks(assignment, user, "profile_assignment.reject")
    if not (reason or "").strip():
        raise InvalidInput("A rejection needs a reason.", field="reason")
    return _decide(assignment, user, revision, S.REJECTED, reason.strip())


def _require_live(assignment: AssetConfigurationProfile) -> None:
    if assignment.status not in LIVE:
        raise Conflict(f"This assignment is {assignment.get_status_display()}.")


def change_assignment(
    user, assignment: AssetConfigurationProfile, *, psa_task_id=None, audit_interval_seconds=None
) -> AssetConfigurationProfile:
    """A new PSA task or audit interval. The change is the caller's request: when the profile's
    current revision enforces, the assignment awaits a second person's approval again."""
    action = "profile_assignment.change"
    where = site_id_of(assignment)
    engine.require_role(user, profile_services.CAPABILITY, action, assignment, site_id=where)
    _require_site(user, where)
    _require_live(assignment)
    changes = {}
    if audit_interval_seconds is not None and audit_interval_seconds != assignment.audit_interval_seconds:
        changes["audit_interval_seconds"] = _interval(audit_interval_seconds)
    if psa_task_id is not None and str(psa_task_id) != str(assignment.psa_task_id):
        asset = assignment.asset if assignment.asset_id else None
        changes["psa_task"] = _task(user, action, psa_task_id, asset, assignment.site, assignment)
    if not changes:
        return assignment
    with transaction.atomic():
        locked = ConfigurationProfile.objects.select_for_update().get(pk=assignment.profile_id)
        waits = _enforces(locked.current_revision_id)
        to = S.AWAITING_APPROVAL if waits else S.ACTIVE
        reason = "changed: enforce-mode items wait for a second person's approval" if waits else ""
        won = AssetConfigurationProfile.objects.filter(pk=assignment.pk, status__in=LIVE).update(
            **changes, status=to, status_reason=reason, requested_by=user, updated_at=timezone.now()
        )
        if not won:
            raise Conflict("This assignment was stopped or decided meanwhile.")
        history.append(
            user,
            "profile_assignment.changed",
            assignment,
            site_id=where,
            payload={
                "before": {
                    "psa_task_id": str(assignment.psa_task_id),
                    "status": assignment.status,
                    "audit_interval_seconds": assignment.audit_interval_seconds,
                },
                "after": {
                    "psa_task_id": str(changes["psa_task"].pk if "psa_task" in changes else assignment.psa_task_id),
                    "status": to,
                    "audit_interval_seconds": changes.get("audit_interval_seconds", assignment.audit_interval_seconds),
                },
            },
        )
    assignment.refresh_from_db()
    return assignment


def on_revision(user, profile: ConfigurationProfile, revision: ConfigurationProfileRevision) -> int:
    """Called by :func:`profiles.services.revise_profile` inside its transaction, under the
    profile's lock: when the new revision has enforce-mode items, every live assignment awaits a
    second person's approval again (``approved_revision`` stays the old one, so nothing is
    enforced meanwhile); when it has none, there is nothing to approve and they are active. One
    history event per assignment whose status changes; how many."""
    waits = _enforces(revision.pk)
    to = S.AWAITING_APPROVAL if waits else S.ACTIVE
    reason = f"profile revised to r{revision.revision}: enforce-mode items wait for a second person's approval"
    moving = list(
        AssetConfigurationProfile.objects.filter(profile=profile, status__in=LIVE)
        .exclude(status=to)
        .select_related("asset")
    )
    if not moving:
        return 0
    AssetConfigurationProfile.objects.filter(pk__in=[a.pk for a in moving]).update(
        status=to, status_reason=reason if waits else "", updated_at=timezone.now()
    )
    history.append_many(
        history.Event(
            history.actor_of(user),
            f"profile_assignment.{'awaiting_approval' if waits else 'activated'}",
            AssetConfigurationProfile._meta.label_lower,
            str(assignment.pk),
            site_id_of(assignment),
            {
                "revision": revision.revision,
                "approved_revision": str(assignment.approved_revision_id) if assignment.approved_revision_id else None,
                "reason": reason if waits else f"profile revised to r{revision.revision}: no enforce-mode items",
            },
        )
        for assignment in moving
    )
    return len(moving)


def _stop(actor, assignment: AssetConfigurationProfile, reason: str) -> bool:
    with transaction.atomic():
        if not AssetConfigurationProfile.objects.filter(pk=assignment.pk, status__in=LIVE).update(
            status=S.STOPPED, status_reason=reason, updated_at=timezone.now()
        ):
            return False
        history.append(
            actor, "profile_assignment.stopped", assignment, site_id=site_id_of(assignment), payload={"reason": reason}
        )
    return True


def withdraw_assignment(user, assignment: AssetConfigurationProfile, reason: str = "") -> AssetConfigurationProfile:
    """Whoever may assign profiles at the assignment's site stops it: no more audits or enforcement."""
    action = "profile_assignment.withdraw"
    engine.require_role(user, profile_services.CAPABILITY, action, assignment, site_id=site_id_of(assignment))
    _require_site(user, site_id_of(assignment))
    _require_live(assignment)
    told = f"withdrawn by {user.get_username()}" + (f": {reason.strip()}" if (reason or "").strip() else "")
    if not _stop(user, assignment, told):
        raise Conflict("This assignment was stopped or decided meanwhile.")
    assignment.refresh_from_db()
    return assignment


def stop_unauthorised_assignments(now: datetime | None = None) -> int:
    """Live assignments whose PSA task or case expired, was withdrawn (no longer approved) or moved
    to another site stop, with the reason (Law 1 after creation too); how many. Scheduled every
    minute; the candidates are found in one query, the law decides each."""
    now = now or timezone.now()
    gone = (
        ~Q(psa_task__status=AuthorityStatus.APPROVED)
        | ~Q(psa_task__case__status=AuthorityStatus.APPROVED)
        | Q(psa_task__expires_at__lte=now)
        | Q(psa_task__case__expires_at__lte=now)
        | (Q(asset__isnull=False) & ~Q(asset__site_id=F("psa_task__case__site_id")))
        | (Q(site__isnull=False) & ~Q(site_id=F("psa_task__case__site_id")))
    )
    stopped = 0
    candidates = AssetConfigurationProfile.objects.filter(gone, status__in=LIVE).select_related(
        "asset", "site", "psa_task__case"
    )
    for assignment in candidates[:1000]:
        asset = assignment.asset if assignment.asset_id else None
        problem = _authority_problem(assignment.psa_task, asset, assignment.site, now)
        if problem and _stop("system", assignment, f"authority withdrawn: {problem}"):
            stopped += 1
    return stopped
