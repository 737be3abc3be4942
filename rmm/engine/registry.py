"""Job kinds register here; the engine creates and dispatches every kind alike.

A domain app describes its kind once (in its AppConfig.ready) and never talks to agents. What is
the kind's own (its model, what the caller's parameters mean, its steps, its result and evidence)
it supplies here; every law (authority, sites, kill switches, approval, history) stays the
engine's (:mod:`rmm.engine.services.creating`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import models

from rmm.authority import laws
from rmm.core.text import display_text

# What a failed or timed-out step means for the job's later steps (InstructionSpec.on_failure).
STOP = "stop"  # no later step runs; the job ends with the step's status
CONTINUE = "continue"  # the next step runs as if it had succeeded; the job ends failed all the same
CLEANUP = "cleanup"  # the job's cleanup steps run, and no other; the job ends with the step's status
ON_FAILURE = (STOP, CONTINUE, CLEANUP)


@dataclass(frozen=True)
class Artefact:
    """A file a step needs on the endpoint: a blob already in the blob store (``blob`` is its
    name there, :mod:`rmm.core.blobs`), fetched by the agent and checked against ``sha256`` and
    ``size`` before the step runs. The script finds it under ``name`` (docs/agent.md)."""

    name: str
    sha256: str
    size: int
    blob: str


@dataclass(frozen=True)
class InstructionSpec:
    """One fully rendered step for one asset, before the engine signs it. A kind renders a job's
    steps in order; the engine numbers them and issues each only once the one before ended."""

    asset: Any
    interpreter: str
    content: str
    arguments: list[str] = field(default_factory=list)
    timeout_seconds: int = 300
    privileged: bool = False
    on_failure: str = STOP
    # A cleanup step runs only after a step whose on_failure is CLEANUP failed; otherwise skipped.
    cleanup: bool = False
    # Files the agent fetches and verifies before the step runs (agents of protocol 2 and later).
    artefacts: tuple[Artefact, ...] = ()
    # "now" or "if_pending" (the OS says one is pending): the endpoint reboots once the step
    # succeeded, and the job's next step waits until its agent came back (docs/agent.md).
    # Issued only to an agent that can (its heartbeat's capabilities name "reboot").
    reboot: str = ""


@dataclass(frozen=True)
class Approval:
    """A second person's decision that already covers the jobs being created (a profile
    assignment approved for enforcement covers each enforcement job it makes): they queue without
    an approval each. ``covers`` says which decision, for the history."""

    by: Any  # the approver (a user); never the jobs' requester (Law 8), or the approval counts for nothing
    at: Any  # when it was decided
    covers: str


@dataclass(frozen=True)
class NewJob:
    """What a kind makes of the caller's parameters, the same for each asset's job."""

    # the kind's own fields of each job row (the engine sets asset, site, psa_task, status,
    # status_reason and requested_by)
    fields: dict[str, Any]
    # each job waits for an approver before it runs (the artefact asks for it)
    requires_approval: bool = False
    # what the jobs run, as refusals and the job.created event name it ({"script": id})
    names: dict[str, str] = field(default_factory=dict)
    # more of the kind's fields for the job.created event
    created: dict[str, Any] = field(default_factory=dict)
    # a decision already made by a second person that covers these jobs: they are created
    # decided (decided_by, decided_at) and queued, past both approval gates
    approved: Approval | None = None


@dataclass(frozen=True)
class Window:
    """When a batch's work may start (a site's maintenance windows): the window open at the moment
    asked about (``opens`` at or before it), else the next one; ``closes`` None: it never closes."""

    opens: datetime
    closes: datetime | None = None

    def open_at(self, moment: datetime) -> bool:
        return self.opens <= moment and (self.closes is None or moment < self.closes)


def signed_instruction(inst) -> dict:
    """What every kind's evidence document says of the instruction it records: the signed payload
    as the agent received it, its signature and key, and when it was leased and finished."""
    return {
        "id": inst.pk,
        "payload": inst.payload,
        "signature": inst.signature,
        "key_id": inst.key_id,
        "content_sha256": inst.content_sha256,
        "leased_at": inst.leased_at,
        "finished_at": inst.finished_at,
    }


def reported_result(inst, stdout: bytes | None) -> dict:
    """What an evidence document says of an instruction's result: its status and outcome, exit
    code, reason, result hash, and the stdout the agent reported (None when it reported none)
    with the stdout's sha256."""
    return {
        "status": inst.status,
        "outcome": inst.outcome or inst.status,
        "exit_code": inst.exit_code,
        "reason": inst.reason,
        "hash": inst.result_hash or None,
        "stdout": display_text(stdout)[0] if stdout is not None else None,
        "stdout_sha256": hashlib.sha256(stdout).hexdigest() if stdout is not None else None,
    }


def job_document(job, kind: str) -> dict:
    """What an evidence document says of a job whose model stamps ``started_at`` and
    ``completed_at`` (deployment, containment)."""
    return {
        "kind": kind,
        "id": job.pk,
        "status": job.status,
        "status_reason": job.status_reason,
        "requested_by": job.requested_by.get_username(),
        "created_at": job.created_at,
        "executed_at": job.started_at,
        "completed_at": job.completed_at,
    }


def step_result(inst, result: dict, late: bool) -> dict:
    """What an evidence document says of one step's result: the agent's report (its status, hash,
    stdout and structured document) and whether it came after the instruction ended."""
    stdout = result.get("stdout", b"") if result else None
    return {**reported_result(inst, stdout), "structured": inst.structured, "late": late}


def task_authority(job) -> dict:
    """The authority of a job created on a PSA task (every kind's: its model has ``psa_task``)."""
    return {"psa_case_id": job.psa_task.case_id, "psa_task_id": job.psa_task_id}


def task_authority_problem(job) -> str | None:
    """Why the job's PSA task no longer covers its asset, or None (Law 1, checked again)."""
    return laws.authority_problem(job.psa_task, job.asset)


@dataclass(frozen=True)
class JobKind:
    """A kind's model subclasses :class:`rmm.engine.models.JobBase` and has ``asset`` and
    ``psa_task`` foreign keys: the engine creates its jobs (:mod:`rmm.engine.services.creating`)."""

    name: str
    model: type[models.Model]
    # (**the caller's parameters) -> NewJob: validate them (raise InvalidInput) and say what each
    # new job row holds; called by the engine before it checks authority
    prepare: Callable[..., NewJob]
    # job -> the steps that carry it out, in order (called when the job is queued, and again to
    # issue each later step: the same job must render the same steps)
    render: Callable[[Any], list[InstructionSpec]]
    # the evidence type (registered with evidence.types) of a finished instruction's record, and
    # the entity its record names (``related_entity``, e.g. "script_job")
    evidence_type: str
    evidence_entity: str
    # (job, instruction, stored, result dict, late) -> the evidence document of one finished
    # instruction; ``stored`` is what store_result returned (None when the agent reported
    # nothing: lost, or aborted before it ran), ``late`` for a result that came after the
    # instruction ended. The engine records it, after the job's status is settled.
    evidence_document: Callable[[Any, Any, Any, dict, bool], dict]
    # job -> a short human description for the console and events
    describe: Callable[[Any], str]
    # job -> what the approval queue's card says will run, as (label, value) pairs (e.g. the
    # script, its version and sha256); the queue adds where, on whose authority and who asked.
    # None: the description alone
    card: Callable[[Any], list[tuple[str, str]]] | None = None
    # job -> {"psa_case_id": ..., "psa_task_id": ...}: the upstream authority to tell when it ends
    authority: Callable[[Any], dict] = task_authority
    # job -> why its authority no longer covers it, or None (re-checked when it is approved)
    authority_problem: Callable[[Any], str | None] = task_authority_problem
    # the API field that names the job's authority, for refusals
    authority_field: str = "psa_task_id"
    # (job, instruction, result dict) -> the kind's own record of what the agent reported (its
    # result table), passed to evidence_document; called inside the engine's transaction, for
    # every instruction its agent reported on (late results too)
    store_result: Callable[[Any, Any, dict], Any] = lambda job, inst, result: None
    # (instruction, result dict) -> (status, reason) that the agent's result means for the
    # instruction, or None for the engine's reading (completed with exit 0: succeeded). The
    # result's "structured" is the step's JSON document (a scan, a detection check), so a kind
    # decides success from it. Pure: called inside the engine's transaction, for many at once.
    judge: Callable[[Any, dict], tuple[str, str] | None] | None = None
    # [(job, instruction, result dict), ...] -> what store_result returns for each, in order, at
    # once (one insert for many results taken in together); None: store_result for each
    store_results: Callable[[list[tuple[Any, Any, dict]]], list] | None = None
    # (job, stored, evidence record) -> None: what store_result kept, told of the instruction's
    # evidence record once the engine wrote it (e.g. observations that cite it); called only
    # when the agent reported (stored from store_result)
    evidence_recorded: Callable[[Any, Any, Any], None] | None = None
    # authority key ("psa_case_id", "psa_task_id") -> the job model's lookup for it: withdrawn
    # authority aborts the kind's queued jobs whose instructions are not yet issued
    authority_lookups: dict[str, str] = field(
        default_factory=lambda: {"psa_case_id": "psa_task__case_id", "psa_task_id": "psa_task_id"}
    )
    # relations the console and API load with each job (for describe and detail)
    select_related: tuple[str, ...] = ()
    # template included on the console's job page, rendered with ``job``
    detail_template: str = ""
    # the URL name of the job at the kind's own API endpoint (``GET /api/v1/jobs/`` links to it)
    api_detail: str = ""
    # what each asset's agent must report it can do (rmm_agent.protocol.CAPABILITIES) for
    # the kind's job to be created on it ("": every agent runs scripts)
    capability: str = ""
    # a job of the kind may render no step: something outside the agents carries it (a remote
    # session through a remote-access server). It is queued without an instruction; the kind's
    # own services move it to running and end it. False: rendering no step is a programming error
    steps_optional: bool = False
    # (user, assets, NewJob) -> None: the kind's last check before its job rows exist, made once
    # every law passed (role, sites, authority, kill switches), for lookups in a system outside
    # this one (a remote-access server) that a request without authority must never reach. It
    # refuses by raising (the kind records its refusal) or adds to the NewJob's fields. None:
    # nothing to check
    admit: Callable[[Any, list, NewJob], None] | None = None
    # (batch, now) -> the Window its work may start in (the window open now, or the next one), or
    # None when it may start at any time. The engine releases a batch's ring only while it is
    # open (closed: the batch is held until it opens, said once in the history), and a job's first
    # step not leased when it closes is never leased (its not_after is the close): work released
    # in one window never starts outside it. None: no window
    window: Callable[[Any, datetime], Window | None] | None = None


_KINDS: dict[str, JobKind] = {}


def register(kind: JobKind) -> None:
    _KINDS[kind.name] = kind


def get(name: str) -> JobKind:
    return _KINDS[name]


def kind_of(job) -> JobKind:
    for kind in _KINDS.values():
        if isinstance(job, kind.model):
            return kind
    raise LookupError(f"{type(job).__name__} is not a registered job kind")


def all_kinds() -> list[JobKind]:
    return list(_KINDS.values())


# The evidence app records evidence for the engine (one record, or many at once) and lists a
# job's evidence for the PSA's job events (the core imports no domain app): it registers its
# services here when it is ready.
_evidence_writer: list[tuple[Callable[..., Any], Callable[[list[dict]], list]]] = []
_evidence_reader: list[Callable[[Any], list[dict]]] = []


def register_evidence_writer(
    record: Callable[..., Any], record_many: Callable[[list[dict]], list], of_job: Callable[[Any], list[dict]]
) -> None:
    _evidence_writer[:] = [(record, record_many)]
    _evidence_reader[:] = [of_job]


def _writer() -> tuple[Callable[..., Any], Callable[[list[dict]], list]]:
    if not _evidence_writer:
        raise LookupError("no evidence writer is registered (is the evidence app installed?)")
    return _evidence_writer[0]


def evidence_of(job_id) -> list[dict]:
    """A job's evidence, oldest first, as its id, type and hash (``job.finished`` lists it)."""
    if not _evidence_reader:
        raise LookupError("no evidence reader is registered (is the evidence app installed?)")
    return _evidence_reader[0](job_id)


def write_evidence(**fields) -> Any:
    """Record one piece of evidence (evidence.services.record's arguments); returns the record."""
    return _writer()[0](**fields)


def write_evidence_many(items: list[dict]) -> list:
    """Record many pieces of evidence at once (each a dict of record's arguments): their records
    in one insert. Returns the records, in order."""
    return _writer()[1](items) if items else []
