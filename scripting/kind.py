"""The "script" job kind: how a script job becomes an instruction and what its result means."""

from __future__ import annotations

import hashlib

from rmm.artefacts.states import ApprovalStatus
from rmm.core.errors import InvalidInput
from rmm.core.text import display_text
from rmm.engine import registry
from scripting.models import Script, ScriptJob, ScriptResult

SCRIPT_RESULT = "script_result"  # the evidence type of a script job's result (registered in apps.py)


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


def store_result(job: ScriptJob, inst, result: dict) -> ScriptResult:
    """What the agent said, the streams as display text (escaped reversibly where they are not
    plain UTF-8 text: rmm/text.py)."""
    row = _result_row(job, inst, result)
    row.save(force_insert=True)
    return row


def store_results(reported: list[tuple[ScriptJob, object, dict]]) -> list[ScriptResult]:
    """:func:`store_result` for many results taken in together: one insert."""
    return ScriptResult.objects.bulk_create([_result_row(job, inst, result) for job, inst, result in reported])


def _result_row(job: ScriptJob, inst, result: dict) -> ScriptResult:
    stdout, stdout_escaped = display_text(result["stdout"])
    stderr, stderr_escaped = display_text(result["stderr"])
    return ScriptResult(
        job=job,
        stdout=stdout,
        stderr=stderr,
        stdout_escaped=stdout_escaped,
        stderr_escaped=stderr_escaped,
        exit_code=result.get("exit_code"),
        hash=inst.result_hash,
        stdout_truncated=result.get("stdout_truncated") is True,
        stderr_truncated=result.get("stderr_truncated") is True,
        structured=result.get("structured"),
    )


def evidence_document(job: ScriptJob, inst, stored: ScriptResult | None, result: dict, late: bool) -> dict:
    """The script job's evidence document; the engine records it for every finished instruction."""
    document = _document(job, inst, stored)
    if stored is not None:
        document["result"].update(
            {
                f"{name}_{key}": value
                for name in ("stdout", "stderr")
                for key, value in (("sha256", hashlib.sha256(result[name]).hexdigest()), ("bytes", len(result[name])))
            },
            truncated_for_delivery=result.get("truncated_for_delivery") is True,
            original_hash=result.get("original_hash"),
        )
    document["result"]["late"] = late
    return document


def _document(job: ScriptJob, inst, stored: ScriptResult | None) -> dict:
    script, task = job.script, job.psa_task
    return {
        "evidence_type": SCRIPT_RESULT,
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
        "instruction": registry.signed_instruction(inst),
        "authority": {
            "psa_task_id": task.pk,
            "psa_task_title": task.title,
            "psa_case_id": task.case_id,
            "psa_case_title": task.case.title,
        },
        "asset": {"id": job.asset_id, "hostname": job.asset.hostname, "site": job.site.name},
        "result": {
            "status": inst.status,  # the word the console and the reports show (states.status_word)
            "outcome": inst.outcome or inst.status,
            "exit_code": inst.exit_code,
            "reason": inst.reason,
            "hash": inst.result_hash or None,
            "stdout": stored.stdout if stored else None,
            "stderr": stored.stderr if stored else None,
            "stdout_escaped": stored.stdout_escaped if stored else False,
            "stderr_escaped": stored.stderr_escaped if stored else False,
            "stdout_truncated": stored.stdout_truncated if stored else False,
            "stderr_truncated": stored.stderr_truncated if stored else False,
            "containment": inst.containment,
            "structured": inst.structured,
        },
    }


def describe(job: ScriptJob) -> str:
    return f"{job.script.name} v{job.script.version} on {job.asset.hostname}"


def card(job: ScriptJob) -> list[tuple[str, str]]:
    """What the approval queue shows of the script a job will run."""
    script = job.script
    return [
        ("Script", script.name),
        ("Version", str(script.version)),
        ("sha256", script.sha256),
        ("Privileged", "yes: runs as root/SYSTEM" if script.privileged else "no"),
    ]


def prepare(*, script_id) -> registry.NewJob:
    """A script job runs one approved version (Law 3); the version may ask for each job's approval."""
    script = Script.objects.filter(pk=script_id).first() if script_id else None
    if script is None:
        raise InvalidInput("No such script.", field="script")
    if script.approval_status != ApprovalStatus.APPROVED:
        raise InvalidInput(f"This script version is {script.approval_status}, not approved.", field="script")
    return registry.NewJob(
        fields={"script": script},
        requires_approval=script.requires_approval,
        names={"script": str(script.pk)},
        created={"script_sha256": script.sha256},
    )


registry.register(
    registry.JobKind(
        name="script",
        model=ScriptJob,
        prepare=prepare,
        render=render,
        evidence_type=SCRIPT_RESULT,
        evidence_entity="script_job",
        evidence_document=evidence_document,
        store_result=store_result,
        store_results=store_results,
        describe=describe,
        card=card,
        # the evidence document names the version's author and approver too
        select_related=(
            "script__author",
            "script__decided_by",
            "asset",
            "site",
            "result",
            "psa_task__case",
            "requested_by",
            "decided_by",
        ),
        detail_template="scripting/job_detail.html",
        api_detail="script-job-detail",
    )
)
