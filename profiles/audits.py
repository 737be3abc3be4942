"""Audits: the services that request them and take in what they read (the only writers of
observations and drift events). An audit reads; it never changes an endpoint (Law 4). Its jobs are
the engine's (kind ``profile_audit``, :mod:`profiles.kind`): authority, sites, kill switches and
history are applied there. Enforcement (a later job kind) will start from
:func:`drifted_items`' answer; nothing here fixes anything."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from django.db.models import Q
from django.utils import timezone

from evidence import services as evidence
from profiles import auditing, counts
from profiles.models import (
    AssetConfigurationProfile,
    AssignmentStatus,
    ConfigurationAuditJob,
    ConfigurationDriftEvent,
    ConfigurationItem,
    ConfigurationObservation,
    EnforcementMode,
    ObservationState,
)
from rmm.access import roles as access
from rmm.core.errors import Conflict, InvalidInput, NotFound
from rmm.core.on_commit import enqueue_on_commit
from rmm.engine import services as engine
from rmm.history import services as history
from rmm.inventory.models import Asset
from rmm.outbox import services as outbox

KIND = "profile_audit"
AUDIT_RESULT = "configuration_audit"  # evidence of each audit instruction (the engine records it)
DRIFT_REPORT = "drift_report"  # evidence of an audit that found a change of compliance
DRIFT_DETECTED, DRIFT_RESOLVED = "drift.detected", "drift.resolved"
AUDITABLE = (AssignmentStatus.ACTIVE, AssignmentStatus.AWAITING_APPROVAL)
OBSERVED_FIELDS = [
    "profile_revision",
    "observed_value",
    "observed_at",
    "compliant",
    "state",
    "known_state",
    "exit_code",
    "reason",
    "audit_job",
    "enforcement_job",
    "evidence",
]


@dataclass(frozen=True)
class Source:
    """Which kind of job read the values being stored: an audit, or an enforcement's re-read.
    The observations and drift events name it in ``field``; the drift report's
    ``related_entity`` is ``entity``; the outbox events name ``label``."""

    field: str
    entity: str
    label: str


AUDIT = Source("audit_job", "configuration_audit_job", "profiles.configurationauditjob")
ENFORCEMENT = Source("enforcement_job", "configuration_enforcement_job", "profiles.configurationenforcementjob")


def visible_assignments(user):
    """Assignments of the sites the caller may see (an asset's by the asset's site)."""
    sites = access.visible_sites(user)
    return AssetConfigurationProfile.objects.filter(Q(asset__site__in=sites) | Q(site__in=sites))


def assigned_to(asset):
    """The assignments that cover an asset: its own and its site's."""
    return AssetConfigurationProfile.objects.filter(Q(asset=asset) | Q(site_id=asset.site_id))


def request_audit(user, assignment_id) -> list[ConfigurationAuditJob]:
    """Audit an assignment now: one job on its asset, or one per active asset of its site in one
    batch, under the assignment's PSA task (the engine applies every law)."""
    assignment = visible_assignments(user).select_related("site").filter(pk=assignment_id).first()
    if assignment is None:
        if AssetConfigurationProfile.objects.filter(pk=assignment_id).exists():
            history.record_refusal(
                user,
                "access",
                reason="object outside the caller's sites",
                payload={"object": f"profiles.assetconfigurationprofile:{assignment_id}"},
            )
        raise NotFound("No such assignment.")
    if assignment.status not in AUDITABLE:
        raise Conflict(f"The assignment is {assignment.status}: it is audited no more.", field="status")
    common = {"psa_task_id": assignment.psa_task_id, "assignment_id": assignment.pk}
    if assignment.asset_id:
        return [engine.create_job(user, KIND, asset_id=assignment.asset_id, **common)]
    asset_ids = list(
        Asset.objects.filter(site_id=assignment.site_id, retired_at__isnull=True)
        .order_by("hostname")
        .values_list("pk", flat=True)
    )
    if not asset_ids:
        raise InvalidInput(f"The site {assignment.site.name} has no active assets.", field="site")
    return engine.create_jobs(user, KIND, asset_ids=asset_ids, **common)


# --- taking a result in ---------------------------------------------------------------------------


@dataclass
class Audited:
    """What an audit result made (the kind's stored result, passed to its evidence document)."""

    problem: str  # why no item could be read ("" when the document was read)
    verdicts: list[tuple[ConfigurationItem, auditing.Verdict]] = field(default_factory=list)
    drift: list[ConfigurationDriftEvent] = field(default_factory=list)
    # an audit's drift_report; an enforcement's re-read writes none (its own evidence says it)
    drift_report: object | None = None
    # the outbox events of the drift, sent once the evidence they name exists
    events: list = field(default_factory=list)


def _transition(before: str, after: str) -> bool:
    """Drift is a change of the known state to or from non-compliant (a first read counts when it
    is non-compliant; a read error changes nothing)."""
    return after != before and ObservationState.NON_COMPLIANT in (before, after)


def store_audit_result(job: ConfigurationAuditJob, inst, result: dict) -> Audited:
    """Compare what the agent read with each item of the job's revision and keep it: observations
    upserted, a drift event and a history event per change, one ``drift_report`` evidence and one
    outbox event per direction. A constant number of queries whatever the number of items (inside
    the engine's transaction, with the history deferred). Non-compliant enforce-mode items are
    handed to enforcement once this commits (:mod:`profiles.enforcement`)."""
    items = list(
        ConfigurationItem.objects.filter(revision_id=job.profile_revision_id)
        .select_related("config_key")
        .order_by("position")
    )
    try:
        readings, problem = auditing.parse(result), ""
    except auditing.AuditOutputError as exc:
        readings, problem = {}, f"{exc} (the audit {inst.status})"
    audited = store_readings(job, inst, items, readings, problem, AUDIT)
    if any(
        item.enforcement_mode == EnforcementMode.ENFORCE and verdict.state == ObservationState.NON_COMPLIANT
        for item, verdict in audited.verdicts
    ):
        enqueue_on_commit("profiles.tasks.enforce_drift", str(job.pk))
    return audited


def _read_by(observation: ConfigurationObservation):
    return observation.audit_job or observation.enforcement_job


def store_readings(job, inst, items: list[ConfigurationItem], readings: dict, problem: str, source: Source) -> Audited:
    """Compare ``readings`` (by item id) with ``items`` of the job's revision on its asset and keep
    them: what an audit and an enforcement's re-read both do. ``problem``: why nothing could be
    read (every item is then an error)."""
    cap, now = auditing.value_cap(len(items)), timezone.now()
    existing = {
        row.item_id: row
        for row in ConfigurationObservation.objects.select_for_update(of=("self",))
        .select_related("audit_job", "enforcement_job")
        .filter(asset_id=job.asset_id, item__in=[item.pk for item in items])
    }
    audited, rows, changes = Audited(problem), [], []
    for item in items:
        if problem:
            verdict = auditing.Verdict(ObservationState.ERROR, None, problem)
        else:
            verdict = auditing.compare(
                item.comparison, item.config_key.value_type, item.desired_value, readings.get(str(item.pk)), cap
            )
        audited.verdicts.append((item, verdict))
        before = existing.get(item.pk)
        if before is not None and _read_by(before).created_at > job.created_at:
            continue  # a late result of an older read: the newer reading stays
        known_before = before.known_state if before is not None else ""
        known = known_before if verdict.state == ObservationState.ERROR else verdict.state
        reading = readings.get(str(item.pk))
        rows.append(
            ConfigurationObservation(
                asset_id=job.asset_id,
                item=item,
                profile_revision_id=job.profile_revision_id,
                observed_value=verdict.observed_value,
                observed_at=now,
                compliant=verdict.compliant,
                state=verdict.state,
                known_state=known,
                exit_code=reading.exit_code if reading is not None else None,
                reason=verdict.reason,
                audit_job=job if source is AUDIT else None,
                enforcement_job=job if source is ENFORCEMENT else None,
                evidence=None,
            )
        )
        if _transition(known_before, known):
            changes.append((item, known_before, known, verdict))
    ConfigurationObservation.objects.bulk_create(
        rows, update_conflicts=True, unique_fields=["asset", "item"], update_fields=OBSERVED_FIELDS
    )
    if rows:
        counts.recount(job.asset_id, job.profile_revision_id)
    if changes:
        _record_drift(job, inst, audited, changes, now, source)
    return audited


def _record_drift(job, inst, audited: Audited, changes: list, now, source: Source) -> None:
    """Report drift, never fix it (Law 4): the drift events, a history event each, one
    ``drift_report`` evidence and the outbox events (to non-compliant, back to compliant). An
    enforcement's re-read writes no drift report: its own evidence record, written next by the
    engine, is the report, and :func:`link_enforcement_evidence` sends the events."""
    assignment, profile, task = job.assignment, job.assignment.profile, job.psa_task
    described = [
        {
            "item": str(item.pk),
            "config_key": item.config_key.name,
            "parameters": item.parameters,
            "comparison": item.comparison,
            "desired_value": item.desired_value,
            "observed_value": verdict.observed_value,
            "from_state": before,
            "to_state": after,
        }
        for item, before, after, verdict in changes
    ]
    about = {
        "asset": str(job.asset_id),
        "hostname": job.asset.hostname,
        "site": job.site.name,
        "profile": str(profile.pk),
        "profile_name": profile.name,
        "profile_revision": job.profile_revision.revision,
        "assignment": str(assignment.pk),
        "audit_job": str(job.pk) if source is AUDIT else str(job.audit_job_id),
        **({"enforcement_job": str(job.pk)} if source is ENFORCEMENT else {}),
        "psa_task_id": str(task.pk),
        "psa_case_id": str(task.case_id),
    }
    if source is AUDIT:
        report = evidence.record(
            asset=job.asset,
            evidence_type=DRIFT_REPORT,
            related_entity=source.entity,
            related_id=job.pk,
            site_id=job.site_id,
            psa_case_id=task.case_id,
            psa_task_id=task.pk,
            actor=f"agent:{inst.agent_id}",
            document={
                "evidence_type": DRIFT_REPORT,
                **about,
                "instruction": {"id": str(inst.pk), "result_hash": inst.result_hash},
                "detected_at": now,
                "changes": described,
            },
        )
        audited.drift_report = report
    audited.drift = [
        ConfigurationDriftEvent(
            asset_id=job.asset_id,
            site_id=job.site_id,
            profile_id=profile.pk,
            profile_revision_id=job.profile_revision_id,
            item=item,
            from_state=before,
            to_state=after,
            observed_value=verdict.observed_value,
            detected_at=now,
            **{source.field: job},
            evidence=audited.drift_report,
        )
        for item, before, after, verdict in changes
    ]
    ConfigurationDriftEvent.objects.bulk_create(audited.drift)
    history.append_many(
        history.Event(
            f"agent:{inst.agent_id}",
            "profile.drift" if entry["to_state"] == ObservationState.NON_COMPLIANT else "profile.drift_resolved",
            "profiles.configurationdriftevent",
            str(event.pk),
            job.site_id,
            {**{key: about[key] for key in ("asset", "profile", "profile_revision", source.field)}, **entry},
        )
        for event, entry in zip(audited.drift, described, strict=True)
    )
    for event_type, to_state in ((DRIFT_DETECTED, ObservationState.NON_COMPLIANT), (DRIFT_RESOLVED, "compliant")):
        these = [entry for entry in described if entry["to_state"] == to_state]
        if these:
            audited.events.append(
                outbox.Emitted(event_type, source.label, str(job.pk), job.site_id, {**about, "items": these})
            )
    if audited.drift_report is not None:
        _emit(audited, audited.drift_report)


def _emit(audited: Audited, record) -> None:
    """The drift events to the outbox, naming the evidence of the change."""
    outbox.emit_many(
        [dataclasses.replace(event, data={**event.data, "evidence_id": str(record.pk)}) for event in audited.events]
    )


def link_evidence(job: ConfigurationAuditJob, audited: Audited, record) -> None:
    """The audit's evidence record, once the engine wrote it, on the observations it proves."""
    ConfigurationObservation.objects.filter(asset_id=job.asset_id, audit_job_id=job.pk).update(evidence=record)


def link_enforcement_evidence(job, audited: Audited, record) -> None:
    """An enforcement's evidence record, once the engine wrote it, on the observation its re-read
    wrote and on the drift it found: that record (before, action, after) is the report of the
    change, and the drift events go to the outbox naming it."""
    ConfigurationObservation.objects.filter(asset_id=job.asset_id, enforcement_job_id=job.pk).update(evidence=record)
    if audited.drift:
        ConfigurationDriftEvent.objects.filter(pk__in=[event.pk for event in audited.drift]).update(evidence=record)
        _emit(audited, record)


def drifted_items(asset_id, profile_revision_id) -> list[ConfigurationObservation]:
    """The items of a revision that are non-compliant on an asset now: where enforcement (a later
    job kind, with its own authority and approval) will start. Reading only."""
    return list(
        ConfigurationObservation.objects.filter(
            asset_id=asset_id, profile_revision_id=profile_revision_id, state=ObservationState.NON_COMPLIANT
        ).select_related("item__config_key")
    )
