"""The "profile_audit" job kind: one job per (asset, assignment) that reads every item of the
profile's revision in one instruction; the server compares (:mod:`profiles.audits`)."""

from __future__ import annotations

from profiles import auditing, audits
from profiles.models import (
    AssetConfigurationProfile,
    ConfigurationAuditJob,
    ConfigurationItem,
)
from rmm.core.errors import Conflict, InvalidInput
from rmm.core.text import display_text
from rmm.engine import registry


def _items(revision_id) -> list[ConfigurationItem]:
    return list(
        ConfigurationItem.objects.filter(revision_id=revision_id)
        .select_related("config_key__read_script")
        .order_by("position")
    )


def render(job: ConfigurationAuditJob) -> list[registry.InstructionSpec]:
    rendered = auditing.render(_items(job.profile_revision_id))
    return [
        registry.InstructionSpec(
            asset=job.asset,
            interpreter=rendered.interpreter,
            content=rendered.content,
            timeout_seconds=rendered.timeout_seconds,
            privileged=rendered.privileged,
        )
    ]


def prepare(*, assignment_id) -> registry.NewJob:
    """An audit of an assignment's profile at its current revision; the assignment must still be
    audited (active, or awaiting approval for enforcement) and its keys renderable together."""
    assignment = (
        AssetConfigurationProfile.objects.select_related("profile__current_revision").filter(pk=assignment_id).first()
    )
    if assignment is None:
        raise InvalidInput("No such assignment.", field="assignment")
    if assignment.status not in audits.AUDITABLE:
        raise Conflict(f"The assignment is {assignment.status}: it is audited no more.", field="status")
    revision = assignment.profile.current_revision
    try:
        auditing.render(_items(revision.pk))
    except ValueError as exc:
        raise InvalidInput(f"This profile cannot be audited: {exc}.", field="profile") from exc
    return registry.NewJob(
        fields={"assignment": assignment, "profile_revision": revision},
        names={"assignment": str(assignment.pk)},
        created={"profile": str(assignment.profile_id), "profile_revision": revision.revision},
    )


def evidence_document(job: ConfigurationAuditJob, inst, stored: audits.Audited | None, result: dict, late: bool):
    """What the audit ran, what came back and each item's verdict."""
    task, profile = job.psa_task, job.assignment.profile
    stdout = result.get("stdout") if stored is not None else None
    return {
        "evidence_type": audits.AUDIT_RESULT,
        "job": {
            "kind": audits.KIND,
            "id": job.pk,
            "status": job.status,
            "status_reason": job.status_reason,
            "requested_by": job.requested_by.get_username(),
            "created_at": job.created_at,
            "started_at": job.started_at,
            "completed_at": job.completed_at,
        },
        "assignment": {"id": job.assignment_id, "profile": profile.pk, "profile_name": profile.name},
        "profile_revision": job.profile_revision.revision,
        "instruction": {**registry.signed_instruction(inst), "privileged": inst.privileged},
        "authority": {"psa_task_id": task.pk, "psa_case_id": task.case_id, "psa_task_title": task.title},
        "asset": {"id": job.asset_id, "hostname": job.asset.hostname, "site": job.site.name},
        "result": {
            **registry.reported_result(inst, stdout),
            "stderr": display_text(result["stderr"])[0] if stored is not None else None,
            "structured": inst.structured,
            "late": late,
        },
        "observations": [
            {
                "item": str(item.pk),
                "config_key": item.config_key.name,
                "comparison": item.comparison,
                "desired_value": item.desired_value,
                "state": verdict.state,
                "observed_value": verdict.observed_value,
                "reason": verdict.reason,
            }
            for item, verdict in (stored.verdicts if stored is not None else [])
        ],
        "drift_report": str(stored.drift_report.pk) if stored is not None and stored.drift_report else None,
    }


def describe(job: ConfigurationAuditJob) -> str:
    return f"audit of {job.assignment.profile.name} r{job.profile_revision.revision} on {job.asset.hostname}"


def card(job: ConfigurationAuditJob) -> list[tuple[str, str]]:
    return [
        ("Profile", job.assignment.profile.name),
        ("Revision", str(job.profile_revision.revision)),
        ("Reads only", "yes: an audit changes nothing"),
    ]


registry.register(
    registry.JobKind(
        name=audits.KIND,
        model=ConfigurationAuditJob,
        prepare=prepare,
        render=render,
        evidence_type=audits.AUDIT_RESULT,
        evidence_entity="configuration_audit_job",
        evidence_document=evidence_document,
        store_result=audits.store_audit_result,
        evidence_recorded=audits.link_evidence,
        describe=describe,
        card=card,
        select_related=(
            "assignment__profile",
            "profile_revision",
            "asset",
            "site",
            "psa_task__case",
            "requested_by",
            "decided_by",
        ),
        api_detail="audit-job-detail",
    )
)
