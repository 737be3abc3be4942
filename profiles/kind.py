"""The profile job kinds. "profile_audit": one job per (asset, assignment) that reads every item of
the profile's revision in one instruction; the server compares (:mod:`profiles.audits`).
"profile_enforce": one job per drifted enforce-mode item on one asset, its key's set script then a
fresh read in one instruction; the re-read decides (:mod:`profiles.enforcement`)."""

from __future__ import annotations

from profiles import auditing, audits, enforcement
from profiles.models import (
    AssetConfigurationProfile,
    ConfigurationAuditJob,
    ConfigurationEnforcementJob,
    ConfigurationItem,
)
from rmm.core.errors import Conflict, InvalidInput
from rmm.core.text import display_text
from rmm.engine import registry
from rmm.engine.states import JobStatus


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


def _result(inst, result: dict | None, late: bool) -> dict:
    """What the evidence says of a step's result: the engine's reading, with stderr and the document."""
    stdout = result.get("stdout") if result is not None else None
    return {
        **registry.reported_result(inst, stdout),
        "stderr": display_text(result["stderr"])[0] if result is not None else None,
        "structured": inst.structured,
        "late": late,
    }


def evidence_document(job: ConfigurationAuditJob, inst, stored: audits.Audited | None, result: dict, late: bool):
    """What the audit ran, what came back and each item's verdict."""
    task, profile = job.psa_task, job.assignment.profile
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
        "result": _result(inst, result if stored is not None else None, late),
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


# --- profile_enforce ------------------------------------------------------------------------------


def render_enforcement(job: ConfigurationEnforcementJob) -> list[registry.InstructionSpec]:
    item = job.item
    rendered = auditing.ENFORCEMENT_RENDERERS[item.config_key.platform](item)
    return [
        registry.InstructionSpec(
            asset=job.asset,
            interpreter=rendered.interpreter,
            content=rendered.content,
            arguments=auditing.enforcement_arguments(item),
            timeout_seconds=rendered.timeout_seconds,
            privileged=rendered.privileged,
        )
    ]


def judge_enforcement(inst, result: dict) -> tuple[str, str] | None:
    """The re-read decides, never the set script's exit 0: not compliant fails the job, with why."""
    failure = auditing.enforcement_outcome(inst.arguments, result).failure
    return (JobStatus.FAILED, failure) if failure else None


def _script(script) -> dict | None:
    if script is None:
        return None
    return {"id": script.pk, "name": script.name, "version": script.version, "sha256": script.sha256}


def _run(reading: auditing.Reading | None) -> dict | None:
    if reading is None:
        return None
    return {
        "exit_code": reading.exit_code,
        "stdout": display_text(reading.stdout)[0],
        "stdout_bytes": reading.stdout_bytes,
        "stderr": display_text(reading.stderr)[0],
    }


def enforcement_document(
    job: ConfigurationEnforcementJob, inst, stored: enforcement.Stored | None, result: dict, late: bool
) -> dict:
    """The enforcement's before value (the audit's observation that triggered it), its action (the
    set script's version and hash, the parameters and desired value, what it did) and its after
    value (the fresh read), with the signed instruction, the authority and the approval it ran on."""
    task, assignment, item = job.psa_task, job.assignment, job.item
    key = item.config_key
    verdict = stored.audited.verdicts[0][1] if stored is not None else None
    reading = stored.outcome.readings.get(str(item.pk)) if stored is not None else None
    return {
        "evidence_type": enforcement.ENFORCEMENT_RESULT,
        "job": {
            "kind": enforcement.KIND,
            "id": job.pk,
            "status": job.status,
            "status_reason": job.status_reason,
            "requested_by": job.requested_by.get_username(),
            "approved_by": job.decided_by.get_username() if job.decided_by_id else None,
            "approved_at": job.decided_at,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "completed_at": job.completed_at,
        },
        "assignment": {
            "id": assignment.pk,
            "profile": assignment.profile_id,
            "profile_name": assignment.profile.name,
            "approved_revision": job.profile_revision.revision,
        },
        "profile_revision": job.profile_revision.revision,
        "item": {
            "id": item.pk,
            "config_key": key.name,
            "config_key_version": key.version,
            "config_key_sha256": key.content_sha256,
            "parameters": item.parameters,
            "comparison": item.comparison,
            "desired_value": item.desired_value,
        },
        "before": {
            "observed_value": job.before_value,
            "state": job.before_state,
            "observed_at": job.before_observed_at,
            "audit_job": job.audit_job_id,
            "evidence": job.before_evidence_id,
        },
        "action": {
            "set_script": _script(key.set_script),
            "parameters": item.parameters,
            "comparison": item.comparison,
            "desired_value": item.desired_value,
            "run": _run(stored.outcome.set_run) if stored is not None else None,
        },
        "after": None
        if verdict is None
        else {
            "read_script": _script(key.read_script),
            "observed_value": verdict.observed_value,
            "state": verdict.state,
            "compliant": verdict.compliant,
            "reason": verdict.reason,
            "exit_code": reading.exit_code if reading is not None else None,
        },
        "failure": stored.outcome.failure if stored is not None else None,
        "instruction": {**registry.signed_instruction(inst), "privileged": inst.privileged},
        "authority": {"psa_task_id": task.pk, "psa_case_id": task.case_id, "psa_task_title": task.title},
        "asset": {"id": job.asset_id, "hostname": job.asset.hostname, "site": job.site.name},
        "result": _result(inst, result if stored is not None else None, late),
        "drift": [
            {"id": str(event.pk), "from_state": event.from_state, "to_state": event.to_state}
            for event in (stored.audited.drift if stored is not None else [])
        ],
    }


registry.register(
    registry.JobKind(
        name=enforcement.KIND,
        model=ConfigurationEnforcementJob,
        prepare=enforcement.prepare,
        render=render_enforcement,
        judge=judge_enforcement,
        evidence_type=enforcement.ENFORCEMENT_RESULT,
        evidence_entity="configuration_enforcement_job",
        evidence_document=enforcement_document,
        store_result=enforcement.store_enforcement_result,
        evidence_recorded=lambda job, stored, record: audits.link_enforcement_evidence(job, stored.audited, record),
        describe=lambda job: (
            f"enforce {job.item.config_key.name} of {job.assignment.profile.name} "
            f"r{job.profile_revision.revision} on {job.asset.hostname}"
        ),
        card=lambda job: [
            ("Profile", job.assignment.profile.name),
            ("Key", f"{job.item.config_key.name} v{job.item.config_key.version}"),
            ("Desired", f"{job.item.comparison} {job.item.desired_value!r}"),
            ("Before", "absent" if job.before_value is None else repr(job.before_value)),
            ("Set script", f"{job.item.config_key.set_script.name} v{job.item.config_key.set_script.version}"),
        ],
        select_related=(
            "assignment__profile",
            "profile_revision",
            "item__config_key__set_script",
            "item__config_key__read_script",
            "asset",
            "site",
            "psa_task__case",
            "requested_by",
            "decided_by",
        ),
        api_detail="enforcement-job-detail",
    )
)
