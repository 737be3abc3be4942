"""The "script" job kind: how a script job becomes an instruction and what its result means."""

from __future__ import annotations

from evidence import services as evidence
from evidence.models import EvidenceType
from rmm.authority.services import authority_problem
from rmm.engine import registry
from rmm.engine import services as engine
from scripting.models import ScriptJob, ScriptResult


def render(job: ScriptJob) -> list[registry.InstructionSpec]:
    script = job.script
    return [
        registry.InstructionSpec(
            asset=job.asset,
            interpreter=script.language,
            content=script.content,
            timeout_seconds=script.timeout_seconds,
            privileged=script.privileged,
        )
    ]


def on_finished(job: ScriptJob, inst, result: dict, actor) -> None:
    engine.transition_job(job, inst.status, actor, reason=inst.reason)
    stored = None
    if inst.result_hash:  # the agent reported: keep what it said
        stored = ScriptResult.objects.create(
            job=job,
            stdout=result.get("stdout", ""),
            stderr=result.get("stderr", ""),
            exit_code=result.get("exit_code"),
            hash=inst.result_hash,
            stdout_truncated=bool(result.get("stdout_truncated")),
            stderr_truncated=bool(result.get("stderr_truncated")),
        )
    evidence.record(
        asset=job.asset,
        evidence_type=EvidenceType.SCRIPT_RESULT,
        related_entity="script_job",
        related_id=job.pk,
        site_id=job.site_id,
        psa_case_id=job.psa_task.case_id,
        psa_task_id=job.psa_task_id,
        document=evidence_document(job, inst, stored),
    )


def evidence_document(job: ScriptJob, inst, stored: ScriptResult | None) -> dict:
    script, task = job.script, job.psa_task
    return {
        "evidence_type": EvidenceType.SCRIPT_RESULT,
        "job": {
            "kind": "script",
            "id": job.pk,
            "status": job.status,
            "status_reason": job.status_reason,
            "requested_by": job.requested_by.get_username(),
            "approved_by": job.decided_by.get_username() if job.decided_by_id else None,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "completed_at": job.completed_at,
        },
        "script": {
            "id": script.pk,
            "name": script.name,
            "version": script.version,
            "language": script.language,
            "sha256": script.sha256,
            "privileged": script.privileged,
            "author": script.author.get_username(),
            "approved_by": script.decided_by.get_username() if script.decided_by_id else None,
            "approved_at": script.decided_at,
        },
        "instruction": {
            "id": inst.pk,
            "payload": inst.payload,
            "signature": inst.signature,
            "key_id": inst.key_id,
            "content_sha256": inst.content_sha256,
            "leased_at": inst.leased_at,
            "finished_at": inst.finished_at,
        },
        "authority": {
            "psa_task_id": task.pk,
            "psa_task_title": task.title,
            "psa_case_id": task.case_id,
            "psa_case_title": task.case.title,
        },
        "asset": {"id": job.asset_id, "hostname": job.asset.hostname, "site": job.site.name},
        "result": {
            "outcome": inst.outcome or inst.status,
            "exit_code": inst.exit_code,
            "reason": inst.reason,
            "hash": inst.result_hash or None,
            "stdout": stored.stdout if stored else None,
            "stderr": stored.stderr if stored else None,
            "stdout_truncated": stored.stdout_truncated if stored else False,
            "stderr_truncated": stored.stderr_truncated if stored else False,
        },
    }


def describe(job: ScriptJob) -> str:
    return f"{job.script.name} v{job.script.version} on {job.asset.hostname}"


registry.register(
    registry.JobKind(
        name="script",
        model=ScriptJob,
        render=render,
        on_finished=on_finished,
        describe=describe,
        authority=lambda job: {"psa_case_id": job.psa_task.case_id, "psa_task_id": job.psa_task_id},
        authority_problem=lambda job: authority_problem(job.psa_task, job.asset),
        authority_field="psa_task_id",
        authority_lookups={"psa_case_id": "psa_task__case_id", "psa_task_id": "psa_task_id"},
        select_related=("script", "asset", "site", "result", "psa_task__case", "requested_by", "decided_by"),
        detail_template="scripting/job_detail.html",
    )
)
