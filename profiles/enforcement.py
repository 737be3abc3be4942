"""Enforcement: drift on an enforce-mode item made right by a job of its own kind (``profile_enforce``,
:mod:`profiles.kind`), never silently (Law 4). An audit whose result finds such an item
non-compliant hands it here once it commits (:func:`enforce_drift`, a task); while the
assignment is approved for the profile's current revision (:func:`profiles.assignments.enforcement_approved`)
one job per drifted item is created through the engine, on the assignment's PSA task, requested by
the assignment's requester and covered by its approver's decision (no second approval each); the
engine applies every other law (authority, sites, kill switches, history). Otherwise the drift
stays reported and the history says why it was not enforced.

The job runs the key's set script and then a fresh read in one instruction; the item is compliant
again only when the re-read says so (:func:`profiles.auditing.enforcement_outcome`), and the re-read
is stored as an observation like an audit's (:func:`profiles.audits.store_readings`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from profiles import assignments, auditing, audits
from profiles.models import (
    AssetConfigurationProfile,
    ConfigurationAuditJob,
    ConfigurationEnforcementJob,
    ConfigurationObservation,
    EnforcementMode,
    ObservationState,
)
from rmm.core.errors import Conflict, Forbidden, InvalidInput
from rmm.engine import registry
from rmm.engine import services as engine
from rmm.engine.states import ACTIVE
from rmm.history import services as history

KIND = "profile_enforce"
ENFORCEMENT_RESULT = "enforcement_result"  # evidence of each enforcement instruction (the engine records it)
WITHHELD = "profile.enforcement_withheld"  # drift on enforce-mode items reported, not enforced, and why
logger = logging.getLogger(__name__)


def _why_withheld(assignment: AssetConfigurationProfile, audit: ConfigurationAuditJob) -> str:
    """Why the drift an audit found may not be enforced now, or ""."""
    if audit.profile_revision_id != assignment.profile.current_revision_id:
        return "the audit read an older revision of the profile"
    if assignment.status != assignments.S.ACTIVE:
        return f"the assignment is {assignment.status}"
    if not assignments.enforcement_approved(assignment):
        return "the assignment is not approved for the profile's current revision"
    if assignment.decided_at is not None and audit.created_at < assignment.decided_at:
        return "the audit was made before the assignment was approved: its drift stays reported"
    return ""


def enforce_drift(audit_job_id) -> list[ConfigurationEnforcementJob]:
    """The enforcement jobs an audit's drift calls for: one per enforce-mode item the audit found
    non-compliant, unless one for that item on the asset is still active. Withheld (reported only,
    with a ``profile.enforcement_withheld`` event) while the assignment is not approved for the
    revision; a job the engine refuses (no authority, a kill switch, the requester's role) is
    recorded there as a refusal and not made."""
    audit = (
        ConfigurationAuditJob.objects.select_related("assignment__profile", "assignment__requested_by", "asset")
        .filter(pk=audit_job_id)
        .first()
    )
    if audit is None:
        return []
    drifted = [
        observation
        for observation in audits.drifted_items(audit.asset_id, audit.profile_revision_id)
        if observation.item.enforcement_mode == EnforcementMode.ENFORCE and observation.audit_job_id == audit.pk
    ]
    if not drifted:
        return []
    assignment = audit.assignment
    withheld = _why_withheld(assignment, audit)
    if withheld:
        history.append(
            "system",
            WITHHELD,
            assignment,
            site_id=audit.site_id,
            payload={
                "asset": str(audit.asset_id),
                "audit_job": str(audit.pk),
                "items": [str(observation.item_id) for observation in drifted],
                "reason": withheld,
            },
        )
        return []
    busy = set(
        ConfigurationEnforcementJob.objects.filter(
            asset_id=audit.asset_id, item__in=[observation.item_id for observation in drifted], status__in=ACTIVE
        ).values_list("item_id", flat=True)
    )
    made = []
    for observation in drifted:
        if observation.item_id in busy:
            continue
        try:
            made.append(
                engine.create_job(
                    assignment.requested_by,
                    KIND,
                    asset_id=audit.asset_id,
                    psa_task_id=assignment.psa_task_id,
                    assignment_id=assignment.pk,
                    observation_id=observation.pk,
                )
            )
        except (InvalidInput, Forbidden, Conflict) as exc:  # the engine recorded the refusal
            logger.warning("enforcement of item %s on %s refused: %s", observation.item_id, audit.asset_id, exc)
    return made


def prepare(*, assignment_id, observation_id) -> registry.NewJob:
    """An enforcement of one non-compliant observation of an enforce-mode item whose key has a
    set script, under an assignment approved for the item's revision: that approval covers the
    job (:class:`rmm.engine.registry.Approval`)."""
    assignment = (
        AssetConfigurationProfile.objects.select_related("profile", "decided_by").filter(pk=assignment_id).first()
    )
    if assignment is None:
        raise InvalidInput("No such assignment.", field="assignment")
    observation = (
        ConfigurationObservation.objects.select_related("item__config_key", "profile_revision")
        .filter(pk=observation_id)
        .first()
    )
    if observation is None or observation.audit_job_id is None:
        raise InvalidInput("No such observation by an audit.", field="observation")
    item = observation.item
    if observation.profile_revision_id != assignment.profile.current_revision_id:
        raise Conflict("The observation is of an older revision of the profile.", field="observation")
    if not assignments.enforcement_approved(assignment):
        raise Conflict("The assignment is not approved for enforcement of this revision.", field="assignment")
    if item.enforcement_mode != EnforcementMode.ENFORCE:
        raise InvalidInput("The item is in audit mode: its drift is reported, never enforced.", field="item")
    if item.config_key.set_script_id is None:
        raise InvalidInput(f"The key {item.config_key.name} has no set script.", field="item")
    if observation.state != ObservationState.NON_COMPLIANT:
        raise Conflict(f"The item is {observation.state} on the asset: nothing to enforce.", field="observation")
    revision = observation.profile_revision
    return registry.NewJob(
        fields={
            "assignment": assignment,
            "profile_revision": revision,
            "item": item,
            "audit_job_id": observation.audit_job_id,
            "before_value": observation.observed_value,
            "before_state": observation.state,
            "before_observed_at": observation.observed_at,
            "before_evidence_id": observation.evidence_id,
        },
        names={"assignment": str(assignment.pk), "item": str(item.pk)},
        created={
            "profile": str(assignment.profile_id),
            "profile_revision": revision.revision,
            "config_key": item.config_key.name,
            "audit_job": str(observation.audit_job_id),
            "before_value": observation.observed_value,
        },
        approved=registry.Approval(
            by=assignment.decided_by,
            at=assignment.decided_at,
            covers=f"profile assignment {assignment.pk} approved for revision {revision.revision}",
        ),
    )


@dataclass
class Stored:
    """What an enforcement result made: the set script's run and the re-read, judged, and what
    storing the re-read made (observation, drift)."""

    outcome: auditing.Enforced
    audited: audits.Audited


def store_enforcement_result(job: ConfigurationEnforcementJob, inst, result: dict) -> Stored:
    """Keep the re-read as an observation like an audit's (a drift event, ``drift_report`` and
    ``drift.resolved`` when the item complies again) and the after value on the job."""
    outcome = auditing.enforcement_outcome(inst.arguments, result)
    problem = "" if outcome.readings else f"{outcome.failure} (the enforcement {inst.status})"
    audited = audits.store_readings(job, inst, [job.item], outcome.readings, problem, audits.ENFORCEMENT)
    verdict = audited.verdicts[0][1]
    job.after_value, job.after_state = verdict.observed_value, verdict.state
    ConfigurationEnforcementJob.objects.filter(pk=job.pk).update(
        after_value=job.after_value, after_state=job.after_state
    )
    return Stored(outcome, audited)
