"""Results: an agent's report of an instruction it ran, taken in once by instruction id; the
job's next step or its end; the evidence of every finished instruction (the engine's law, the
kind's document). See docs/agent.md for the protocol, docs/architecture.md for the arrow."""

from __future__ import annotations

import re
import uuid

from django.db import transaction
from django.utils import timezone

from rmm.engine import registry
from rmm.engine.models import Instruction
from rmm.engine.services import issuing, kill_switches, steps  # issuing: signing a job's next step
from rmm.engine.services.transitions import transition_instruction, transition_job
from rmm.engine.states import FINAL, JobStatus, status_for_outcome
from rmm.history import services as history
from rmm.inventory.models import Agent
from rmm.outbox import services as outbox
from rmm.text import storable
from rmm_agent.protocol import (
    CONTAINMENT_METHODS,
    EXIT_CODE_RANGE,
    MAX_REASON_CHARS,
    OUTCOMES,
    STREAM_ENCODINGS,
    decode_stream,
    result_hash,
    sendable_text,
)

S = JobStatus

RESULT_FIELDS = ("instruction_id", "outcome", "exit_code", "stdout", "stderr", "stdout_truncated", "stderr_truncated")
MAX_KILLED_REPORTED = 1000
MAX_COMMAND_CHARS = 1000


def _containment_problem(value: object) -> str | None:
    """Why a result's optional ``containment`` is unusable, or None (absent is fine)."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("method") not in CONTAINMENT_METHODS:
        return f"Must be an object whose method is one of: {', '.join(CONTAINMENT_METHODS)}."
    if set(value) - {"method", "killed", "omitted"}:
        return "Only method, killed and omitted are allowed."
    killed = value.get("killed", [])
    if not isinstance(killed, list) or len(killed) > MAX_KILLED_REPORTED:
        return f"killed must be a list of at most {MAX_KILLED_REPORTED} processes."
    for item in killed:
        pid = item.get("pid") if isinstance(item, dict) else None
        if (
            not isinstance(item, dict)
            or set(item) != {"pid", "command"}
            or isinstance(pid, bool)
            or not isinstance(pid, int)
            or not 0 < pid < 2**31
            or not isinstance(item["command"], str)
            or len(item["command"]) > MAX_COMMAND_CHARS
            or not storable(item["command"])
        ):
            return "Each killed process must be {pid: positive integer, command: string}."
    omitted = value.get("omitted", 0)
    if isinstance(omitted, bool) or not isinstance(omitted, int) or not 0 <= omitted < 2**31:
        return "omitted must be a non-negative integer."
    return None


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def check_result(body: dict) -> tuple[dict, dict]:
    """(what cannot be used, by field; the result as the kinds get it). Every field must be one
    the databases can store, so that nothing an agent sends answers 500 (docs/agent.md). The
    kinds get each stream as the exact bytes the script printed, however it travelled."""
    problems = {name: ["This field is required."] for name in RESULT_FIELDS if name not in body}
    if not isinstance(body.get("instruction_id", ""), str):
        problems["instruction_id"] = ["Must be a string."]
    if body.get("outcome") not in OUTCOMES:
        problems["outcome"] = [f"Must be one of: {', '.join(OUTCOMES)}."]
    code, (low, high) = body.get("exit_code"), EXIT_CODE_RANGE
    if code is not None and (isinstance(code, bool) or not isinstance(code, int) or not low <= code <= high):
        problems["exit_code"] = [f"Must be an integer from {low} to {high}, or null."]
    streams = {}
    for name in ("stdout", "stderr"):
        encoding, value = body.get(f"{name}_encoding", "utf-8"), body.get(name, "")
        if encoding not in STREAM_ENCODINGS:
            problems[f"{name}_encoding"] = [f"Must be one of: {', '.join(STREAM_ENCODINGS)}."]
            continue
        try:
            if not isinstance(value, str):
                raise ValueError
            streams[name] = decode_stream(value, encoding)
        except ValueError:
            problems[name] = [
                "Must be base64."
                if encoding == "base64"
                else "Must be a string without lone surrogates "
                f'(send other bytes as base64 with {name}_encoding "base64").'
            ]
    for name in ("stdout_truncated", "stderr_truncated", "truncated_for_delivery"):
        if name in body and not isinstance(body[name], bool):
            problems[name] = ["Must be true or false."]
    original = body.get("original_hash")
    if original is not None and not (isinstance(original, str) and _SHA256_HEX.fullmatch(original)):
        problems["original_hash"] = ["Must be a sha256 in lowercase hex."]
    reason = body.get("reason")
    if reason is not None and not (isinstance(reason, str) and storable(reason)):
        problems["reason"] = ["Must be a string without NUL or lone surrogates, or null."]
    if (problem := _containment_problem(body.get("containment"))) is not None:
        problems["containment"] = [problem]
    return problems, {**body, **streams, "reason": reason[:MAX_REASON_CHARS] if isinstance(reason, str) else ""}


def ingest_result(agent: Agent, body: dict) -> tuple[int, dict]:
    """Accept a result once, by instruction id. Returns (http status, answer)."""
    problems, result = check_result(body)
    if problems:
        return 400, problems
    inst = Instruction.objects.filter(pk=uuid_or_none(body["instruction_id"]), agent=agent).first()
    if inst is None:
        history.record_refusal(
            agent,
            "result",
            reason="result for an instruction that is not this agent's",
            site_id=agent.asset.site_id,
            payload={"instruction_id": sendable_text(body["instruction_id"], 64)},
        )
        return 404, {"detail": "No such instruction for this agent."}
    claimed = body.get("hash", "")
    if claimed != result_hash(body):
        history.record_refusal(
            agent, "result", inst, reason="result hash does not match its content", site_id=inst.site_id
        )
        return 400, {"hash": ["Does not match the result's content."]}
    if inst.result_hash:
        if inst.result_hash == claimed:
            return 200, {"status": "already_received"}
        return 409, {"status": "conflict", "detail": "A different result was already received."}
    if inst.status in FINAL:
        return _late_result(agent, inst, result, claimed)
    to = status_for_outcome(body["outcome"], body.get("exit_code"))
    now = timezone.now()
    reason = result["reason"]
    if body["outcome"] == "refused":
        reason = f"agent refused the instruction: {reason}"
    elif body["outcome"] == "aborted" and inst.abort_reason:
        reason = inst.abort_reason
    payload = {"outcome": body["outcome"], "exit_code": body.get("exit_code"), "status": to}
    payload.update(result_hash=claimed, reason=reason)
    if body.get("containment") is not None:
        payload["containment"] = body["containment"]
    # The history appended last, together: its lock held from there to the commit only.
    with transaction.atomic(), history.deferred():
        updated = transition_instruction(
            inst,
            to,
            agent,
            action="instruction.result",
            payload=payload,
            only_from=[S.RUNNING],
            unless_reported=True,
            outcome=body["outcome"],
            exit_code=body.get("exit_code"),
            result_hash=claimed,
            finished_at=now,
            reason=reason,
            containment=body.get("containment"),
        )
        if not updated:
            current = Instruction.objects.get(pk=inst.pk)
            if current.result_hash == claimed:
                return 200, {"status": "already_received"}
            if current.status in FINAL and not current.result_hash:  # ended meanwhile (the sweep)
                return _late_result(agent, current, result, claimed)
            return 409, {"status": "conflict", "detail": f"The instruction is already {current.status}."}
        finish_job(inst, agent, result)
    return 201, {"status": "accepted"}


def _late_result(agent: Agent, inst: Instruction, result: dict, claimed: str) -> tuple[int, dict]:
    """A result for an instruction that had already ended without one (the sweep found its lease
    run out: an outage, say). Its status stays; what the endpoint did is kept all the same: the
    result on the instruction, the kind's result and evidence, a history event, and the PSA is
    told. Only an instruction its agent leased can have one."""
    if inst.leased_at is None:
        history.record_refusal(
            agent,
            "result",
            inst,
            reason=f"result for an instruction never leased ({inst.status})",
            site_id=inst.site_id,
        )
        return 409, {"status": "conflict", "detail": f"The instruction is {inst.status}; it was never leased."}
    with transaction.atomic(), history.deferred():
        if not Instruction.objects.filter(pk=inst.pk, status__in=FINAL, result_hash="").update(
            outcome=result["outcome"],
            exit_code=result["exit_code"],
            result_hash=claimed,
            containment=result.get("containment"),
        ):
            current = Instruction.objects.get(pk=inst.pk)
            if current.result_hash == claimed:
                return 200, {"status": "already_received"}
            return 409, {"status": "conflict", "detail": "A different result was already received."}
        inst.outcome, inst.exit_code, inst.result_hash = result["outcome"], result["exit_code"], claimed
        inst.containment = result.get("containment")
        history.append(
            agent,
            "instruction.late_result",
            inst,
            site_id=inst.site_id,
            payload={
                "status": inst.status,
                "outcome": inst.outcome,
                "exit_code": inst.exit_code,
                "result_hash": claimed,
                "reason": result["reason"],
            },
        )
        kind = registry.get(inst.job_kind)
        job = _locked_job(inst)
        evidence_id = _record_evidence(kind, job, inst, kind.store_result(job, inst, result), result, late=True).pk
        late = {"instruction_id": str(inst.pk), "outcome": inst.outcome, "exit_code": inst.exit_code}
        late.update(hash=claimed, evidence_id=str(evidence_id) if evidence_id else None)
        outbox.emit_many(
            [
                outbox.Emitted(
                    "job.late_result",
                    kind.model._meta.label_lower,
                    str(inst.job_id),
                    inst.site_id,
                    {"kind": kind.name, "late_result": late},
                )
            ]
        )
    return 201, {
        "status": "accepted_late",
        "detail": f"The instruction was already {inst.status}; the result is kept as a late result.",
    }


def _locked_job(inst: Instruction):
    kind = registry.get(inst.job_kind)
    # The kind's relations come with the locked row: its evidence reads them all (one query, not ten).
    return kind.model.objects.select_for_update(of=("self",)).select_related(*kind.select_related).get(pk=inst.job_id)


def finish_job(inst: Instruction, actor, result: dict) -> None:
    """One of a job's instructions ended (``inst``, already moved, its history appended): the
    kind keeps what the agent reported, the engine issues the job's next step or settles the
    job's status from its steps' (:mod:`rmm.engine.services.steps`), then records the
    instruction's evidence with the kind's document. Inside the caller's transaction; a
    one-step job costs no query more than its end, a longer one a constant few."""
    kind = registry.get(inst.job_kind)
    job = _locked_job(inst)
    stored = kind.store_result(job, inst, result) if inst.result_hash else None  # the agent reported
    specs = kind.render(job)
    ended = {inst.step: (inst.status, inst.reason)}
    stop_asked = ""  # why someone asked to stop this step while it ran (read after our update)
    if len(specs) > 1:
        for step, status, reason, abort_reason in Instruction.objects.filter(
            job_kind=kind.name, job_id=job.pk, status__in=FINAL
        ).values_list("step", "status", "reason", "abort_reason"):
            ended[step] = (status, reason)
            stop_asked = abort_reason if step == inst.step else stop_asked
    after = steps.after_step(specs, ended, inst.step)
    if after.next_step is not None:
        # A step that finished although it was asked to stop (the agent was done before its
        # next heartbeat) stops the job all the same.
        held = stop_asked or _issue_step(kind, job, specs, after.next_step, inst)
        if held:
            after = steps.After(None, S.ABORTED, held)
    if after.next_step is None:
        transition_job(job, after.status, actor, reason=after.reason)
    _record_evidence(kind, job, inst, stored, result)


def _issue_step(kind, job, specs: list, step: int, before: Instruction) -> str:
    """Sign and queue a job's next step for the agent that ran the one before, unless a kill
    switch now covers the asset: then why it was not issued. Under the history's lock, so a
    switch engaged meanwhile is seen here or finds this step queued and stops it."""
    history.lock()
    spec = specs[step]
    switch = kill_switches.active_for(spec.asset.site_id, spec.asset.pk)
    if switch is not None:
        return f"kill switch engaged on {switch.target_label} before step {step + 1} of {len(specs)}"
    rows = issuing._sign(kind, [(job, spec, step)], {spec.asset.pk: before.agent_id}, 0)
    issuing._store(kind, rows, "system", via=f"step {step} of job {job.pk} ended")
    return ""


def _record_evidence(kind, job, inst: Instruction, stored, result: dict, *, late: bool = False):
    """Law: every finished instruction yields evidence; the engine records it, the kind writes
    the document."""
    authority = kind.authority(job)
    return registry.write_evidence(
        asset=job.asset,
        evidence_type=kind.evidence_type,
        related_entity=kind.evidence_entity,
        related_id=job.pk,
        site_id=job.site_id,
        psa_case_id=authority.get("psa_case_id"),
        psa_task_id=authority.get("psa_task_id"),
        document=kind.evidence_document(job, inst, stored, result, late),
    )


def uuid_or_none(value):
    try:
        return uuid.UUID(str(value))
    except (ValueError, TypeError):
        return None
