"""Results: an agent's report of an instruction it ran, taken in once by instruction id; the
job's next step or its end; the evidence of every finished instruction (the engine's law, the
kind's document). See docs/agent.md for the protocol, docs/architecture.md for the arrow."""

from __future__ import annotations

import logging
import re
import uuid
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from rmm.core.errors import InvalidInput
from rmm.core.text import storable
from rmm.engine import registry
from rmm.engine.models import Instruction
from rmm.engine.services import issuing, kill_switches, steps, transitions  # issuing: a job's next step
from rmm.engine.services.transitions import transition_instruction, transition_job
from rmm.engine.states import FINAL, JobStatus, status_for_outcome
from rmm.history import services as history
from rmm.inventory import services as inventory
from rmm.inventory.models import Agent
from rmm.outbox import services as outbox
from rmm_agent.protocol import (
    CONTAINMENT_METHODS,
    EXIT_CODE_RANGE,
    MAX_REASON_CHARS,
    OUTCOMES,
    STREAM_ENCODINGS,
    decode_stream,
    result_hash,
    sendable_text,
    structured_problem,
)

S = JobStatus
logger = logging.getLogger(__name__)

RESULT_FIELDS = ("instruction_id", "outcome", "exit_code", "stdout", "stderr", "stdout_truncated", "stderr_truncated")
MAX_KILLED_REPORTED = 1000
MAX_COMMAND_CHARS = 1000
MAX_STRUCTURED_ERROR = 200


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
    if "structured" in body and (problem := structured_problem(body["structured"])) is not None:
        problems["structured"] = [f"Unusable: {problem}."]
    error = body.get("structured_error")
    if error is not None and not (isinstance(error, str) and len(error) <= MAX_STRUCTURED_ERROR and storable(error)):
        problems["structured_error"] = [f"Must be a string of at most {MAX_STRUCTURED_ERROR} characters, or null."]
    if "reboot" in body and not isinstance(body["reboot"], bool):
        problems["reboot"] = ["Must be true or false."]
    return problems, {**body, **streams, "reason": reason[:MAX_REASON_CHARS] if isinstance(reason, str) else ""}


def ingest_result(agent: Agent, body: dict) -> tuple[int, dict]:
    """Accept a result once, by instruction id. Returns (http status, answer)."""
    problems, result = check_result(body)
    if problems:
        return 400, problems
    return _ingest_one(agent, body, result)


def _ingest_one(agent: Agent, body: dict, result: dict) -> tuple[int, dict]:
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
    to, fields, payload = _outcome(inst, body, result, claimed, timezone.now())
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
            **fields,
        )
        if not updated:
            current = Instruction.objects.get(pk=inst.pk)
            if current.result_hash == claimed:
                return 200, {"status": "already_received"}
            if current.status in FINAL and not current.result_hash:  # ended meanwhile (the sweep)
                return _late_result(agent, current, result, claimed)
            return 409, {"status": "conflict", "detail": f"The instruction is already {current.status}."}
        finish_job(inst, agent, result)
    return ACCEPTED


ACCEPTED = (201, {"status": "accepted"})


def _outcome(inst: Instruction, body: dict, result: dict, claimed: str, now) -> tuple[str, dict, dict]:
    """What a running instruction's result makes of it: (its status, the fields it is updated
    with, its ``instruction.result`` event's payload)."""
    to = status_for_outcome(body["outcome"], body.get("exit_code"))
    reason = result["reason"]
    if body["outcome"] == "refused":
        reason = f"agent refused the instruction: {reason}"
    elif body["outcome"] == "aborted" and inst.abort_reason:
        reason = inst.abort_reason
    elif to == S.SUCCEEDED and body.get("structured_error") is not None:  # never passed silently
        to, reason = S.FAILED, f"its structured result is unusable: {body['structured_error']}"
    elif to == S.SUCCEEDED and (judge := registry.get(inst.job_kind).judge) is not None:
        to, reason = judge(inst, result) or (to, reason)
    payload = {"outcome": body["outcome"], "exit_code": body.get("exit_code"), "status": to}
    payload.update(result_hash=claimed, reason=reason)
    for name in ("containment", "structured_error", "reboot"):
        if body.get(name) is not None:
            payload[name] = body[name]
    fields = {
        "outcome": body["outcome"],
        "exit_code": body.get("exit_code"),
        "result_hash": claimed,
        "finished_at": now,
        "reason": reason,
        "containment": body.get("containment"),
        "structured": body.get("structured"),
    }
    return to, fields, payload


# At most this many results in one transaction: the history's lock, taken at its end, is then
# held for a bounded time, and a batch that fails is retried one by one at bounded cost.
MAX_TOGETHER = 200


def ingest_results(items: list[tuple[Agent, dict]]) -> list[tuple[int, dict] | Exception]:
    """:func:`ingest_result` for results that arrived together (the agent tier collects those
    that arrive while it takes others in: rmm/engine/intake.py). The common case, a running
    one-step job's result, is taken in for all of them in one transaction: one read of the
    instructions, one lock of their rows and of their jobs, one update of each table, the kinds'
    results, the evidence and the history in one insert each (constant queries whatever their
    number). Anything else (a repeat, a late result, another agent's instruction, a step with
    steps after it) goes through :func:`ingest_result` alone, as does every result of a batch
    that fails, so that one bad result costs no other its answer. Returns each item's
    (http status, answer), or the exception its own call raised, in order."""
    answers: list = [None] * len(items)
    checked: dict[int, tuple[Agent, dict, dict]] = {}
    for n, (agent, body) in enumerate(items):
        problems, result = check_result(body)
        if problems:
            answers[n] = (400, problems)
        else:
            checked[n] = (agent, body, result)
    if len(checked) > 1:
        for begin in range(0, len(checked), MAX_TOGETHER):
            share = dict(list(checked.items())[begin : begin + MAX_TOGETHER])
            try:
                answers_together = _ingest_together(share)
            except Exception:  # noqa: BLE001 - each is taken in alone below, and fails alone
                logger.warning("results taken in together failed; taking each in alone", exc_info=True)
                answers_together = {}
            for n, answer in answers_together.items():
                answers[n] = answer
    for n, (agent, body, result) in checked.items():
        if answers[n] is None:
            try:
                answers[n] = _ingest_one(agent, body, result)
            except Exception as exc:  # noqa: BLE001 - raised again in the call that sent it
                answers[n] = exc
    return answers


def _ingest_together(checked: dict[int, tuple[Agent, dict, dict]]) -> dict[int, tuple[int, dict]]:
    """The results among ``checked`` that are a running one-step job's first report, taken in
    together; the others are left out of the answer (and untouched)."""
    first: dict = {}  # instruction id -> the first item that names it (a repeat goes alone, after)
    for n, (_, body, _) in checked.items():
        pk = uuid_or_none(body["instruction_id"])
        if pk is not None:
            first.setdefault(pk, n)
    found = Instruction.objects.in_bulk(list(first))
    candidates = {}
    for pk, n in first.items():
        agent, body, _ = checked[n]
        inst = found.get(pk)
        if (
            inst is not None
            and inst.agent_id == agent.pk
            and inst.status == S.RUNNING
            and not inst.result_hash
            and body.get("hash", "") == result_hash(body)
            and body.get("reboot") is not True  # the agent is marked rebooting: alone
        ):
            candidates[n] = inst
    if len(candidates) < 2:
        return {}
    taken: dict[str, list[tuple]] = {}  # kind -> [(item, job, instruction, its one step)]
    with transaction.atomic(), history.deferred():
        # The instructions' rows, then their jobs', each in one order, as a single result locks them.
        running = set(
            Instruction.objects.select_for_update()
            .filter(pk__in=[inst.pk for inst in candidates.values()], status=S.RUNNING, result_hash="")
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        by_kind: dict[str, list[int]] = {}
        for n, inst in candidates.items():
            if inst.pk in running:
                by_kind.setdefault(inst.job_kind, []).append(n)
        for kind_name, numbers in by_kind.items():
            kind = registry.get(kind_name)
            jobs = kind.model.objects.select_for_update(of=("self",)).select_related(*kind.select_related)
            jobs = jobs.filter(pk__in=[candidates[n].job_id for n in numbers]).order_by("pk").in_bulk()
            for n in numbers:
                job = jobs.get(candidates[n].job_id)
                specs = kind.render(job) if job is not None and job.status == S.RUNNING else []
                if len(specs) == 1:  # a job with more steps: its next one issued, or its steps aggregated, alone
                    taken.setdefault(kind_name, []).append((n, job, candidates[n], specs))
        if not taken:
            return {}
        _take_in(taken, checked, timezone.now())
    return {n: ACCEPTED for rows in taken.values() for n, _, _, _ in rows}


def _take_in(taken: dict[str, list[tuple]], checked: dict, now) -> None:
    """Record the results of ``taken`` (per kind: locked, running, one-step jobs): the
    instructions, the kinds' results, the jobs' ends and the evidence, each table written once."""
    moved, appended = [], []
    for n, _, inst, _ in (row for rows in taken.values() for row in rows):
        agent, body, result = checked[n]
        to, fields, payload = _outcome(inst, body, result, body["hash"], now)
        inst.status = to
        for name, value in fields.items():
            setattr(inst, name, value)
        moved.append(inst)
        appended.append(
            history.Event(
                history.actor_of(agent), "instruction.result", "engine.instruction", str(inst.pk), inst.site_id, payload
            )
        )
    transitions.report_instructions(moved, list(fields))
    history.append_many(appended)
    for kind_name, rows in taken.items():
        kind = registry.get(kind_name)
        reported = [(job, inst, checked[n][2]) for n, job, inst, _ in rows]
        if kind.store_results is not None:
            stored = kind.store_results(reported)
        else:
            stored = [kind.store_result(job, inst, result) for job, inst, result in reported]
        ends = []
        for n, job, inst, specs in rows:
            after = steps.after_step(specs, {0: (inst.status, inst.reason)}, 0)
            ends.append((job, after.status, after.reason, checked[n][0]))  # ended by the agent that reported
        transitions.end_jobs(kind, ends)
        records = registry.write_evidence_many(
            [
                _evidence_fields(kind, job, inst, kind.evidence_document(job, inst, kept, result, False))
                for (job, inst, result), kept in zip(reported, stored, strict=True)
            ]
        )
        for (job, _, _), kept, record in zip(reported, stored, records, strict=True):
            _evidence_recorded(kind, job, kept, record)


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
            structured=result.get("structured"),
        ):
            current = Instruction.objects.get(pk=inst.pk)
            if current.result_hash == claimed:
                return 200, {"status": "already_received"}
            return 409, {"status": "conflict", "detail": "A different result was already received."}
        inst.outcome, inst.exit_code, inst.result_hash = result["outcome"], result["exit_code"], claimed
        inst.containment, inst.structured = result.get("containment"), result.get("structured")
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
        stored = kind.store_result(job, inst, result)
        record = _record_evidence(kind, job, inst, stored, result, late=True)
        _evidence_recorded(kind, job, stored, record)
        evidence_id = record.pk
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
    reboot = None
    if inst.result_hash and result.get("reboot") is True and specs[inst.step].reboot:
        reboot = inventory.mark_rebooting(inst.agent_id, actor, inst)
    if after.next_step is not None:
        # A step that finished although it was asked to stop (the agent was done before its
        # next heartbeat) stops the job all the same.
        held = stop_asked or _issue_step(kind, job, specs, after.next_step, inst, hold=reboot)
        if held:
            after = steps.After(None, S.ABORTED, held)
    if after.next_step is None:
        transition_job(job, after.status, actor, reason=after.reason)
    _evidence_recorded(kind, job, stored, _record_evidence(kind, job, inst, stored, result))


def _issue_step(kind, job, specs: list, step: int, before: Instruction, hold: timedelta | None = None) -> str:
    """Sign and queue a job's next step for the agent that ran the one before, unless a kill
    switch now covers the asset or its agent cannot do what the step needs: then why it was not
    issued. Under the history's lock, so a switch engaged meanwhile is seen here or finds this
    step queued and stops it. ``hold``: the endpoint reboots; the step waits until its agent
    comes back (:func:`rmm.engine.services.leasing.came_back`), at most that long."""
    history.lock()
    spec = specs[step]
    switch = kill_switches.active_for(spec.asset.site_id, spec.asset.pk)
    if switch is not None:
        return f"kill switch engaged on {switch.target_label} before step {step + 1} of {len(specs)}"
    try:
        rows = issuing._sign(kind, [(job, spec, step)], {spec.asset.pk: before.agent_id}, 0, hold=hold)
    except InvalidInput as exc:
        return f"step {step + 1} of {len(specs)} not issued: {exc}"
    issuing._store(kind, rows, "system", via=f"step {step} of job {job.pk} ended")
    return ""


def _record_evidence(kind, job, inst: Instruction, stored, result: dict, *, late: bool = False):
    """Law: every finished instruction yields evidence; the engine records it, the kind writes
    the document."""
    document = kind.evidence_document(job, inst, stored, result, late)
    return registry.write_evidence(**_evidence_fields(kind, job, inst, document))


def _evidence_recorded(kind, job, stored, record) -> None:
    """The kind's own rows that cite the evidence record learn its id (JobKind.evidence_recorded)."""
    if kind.evidence_recorded is not None and stored is not None:
        kind.evidence_recorded(job, stored, record)


def _evidence_fields(kind, job, inst: Instruction, document: dict) -> dict:
    authority = kind.authority(job)
    return {
        "asset": job.asset,
        "evidence_type": kind.evidence_type,
        "related_entity": kind.evidence_entity,
        "related_id": job.pk,
        "site_id": job.site_id,
        "psa_case_id": authority.get("psa_case_id"),
        "psa_task_id": authority.get("psa_task_id"),
        "document": document,
    }


def uuid_or_none(value):
    try:
        return uuid.UUID(str(value))
    except (ValueError, TypeError):
        return None
