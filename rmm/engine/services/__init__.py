"""Dispatch for every kind of job: queue, sign, lease, ingest results, decide approvals, sweep.

Jobs are created in :mod:`rmm.engine.services.creating` (``create_job``, ``create_jobs``, exported
here). The engine knows job kinds only through :mod:`rmm.engine.registry`.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import Exists, F, Max, OuterRef, Q, Subquery, UUIDField
from django.utils import timezone

from rmm.access import roles as access
from rmm.authority.models import AuthorityStatus, PsaCase, PsaTask, authority_gone
from rmm.core import bulk
from rmm.core.errors import Conflict, Forbidden, InvalidInput
from rmm.core.on_commit import enqueue_on_commit
from rmm.core.text import storable
from rmm.engine import events, registry
from rmm.engine.models import Batch, BatchStatus, Instruction, KillSwitch
from rmm.engine.services import batches, kill_switches, steps, throttles, transitions
from rmm.engine.services.creating import create_job as create_job  # the creation service, exported
from rmm.engine.services.creating import create_jobs as create_jobs
from rmm.engine.services.transitions import job_event, transition_instruction, transition_job  # noqa: F401
from rmm.engine.states import FINAL, JobStatus, status_for_outcome
from rmm.history import services as history
from rmm.inventory import services as inventory
from rmm.inventory.models import Agent
from rmm.keys import keyset
from rmm.outbox import services as outbox
from rmm_agent.protocol import (
    CONTAINMENT_METHODS,
    EXIT_CODE_RANGE,
    INTERPRETERS,
    MAX_REASON_CHARS,
    OUTCOMES,
    STREAM_ENCODINGS,
    canonical_json,
    decode_stream,
    iso_utc,
    result_hash,
    sendable_text,
)

S = JobStatus
logger = logging.getLogger(__name__)


# --- job status ---------------------------------------------------------------------------


def require_role(user, capability: str, action: str, subject=None, *, site_id=None) -> None:
    """Refuse, and record the refusal, when the caller's role lacks ``capability`` (Law 7)."""
    if not access.can(user, capability):
        told = capability.replace("_", " ")
        history.record_refusal(user, action, subject, reason=f"role may not {told}", site_id=site_id)
        raise Forbidden(f"Your role may not {told}.")


def check_four_eyes(obj, user, *, author_field: str, action: str) -> None:
    """Law 8: whoever wrote or requested something never decides it, by any path."""
    if getattr(obj, f"{author_field}_id") == user.pk:
        history.record_refusal(user, action, obj, reason="self-approval", site_id=getattr(obj, "site_id", None))
        raise Forbidden("You may not approve or reject your own work.")


def approve_job(job, user) -> None:
    """A second person lets a job that needs approval run.

    Authority and kill switches are checked once more inside the transaction that queues it,
    under the history's lock, with the job and its authority read again: a withdrawal or a switch
    that committed after the first check is seen, and one that commits later finds the job's
    instructions when it stops work (:func:`rmm.history.services.lock`)."""
    require_role(user, "approve", "job.approve", job, site_id=job.site_id)
    check_four_eyes(job, user, author_field="requested_by", action="job.approve")
    kind = registry.kind_of(job)
    # Law 1 holds when the work becomes executable too: the PSA may have withdrawn it meanwhile.
    _refuse_unauthorised(kind, job, user)
    for spec in kind.render(job):
        kill_switches.refuse_if_engaged(spec.asset, user, "job.approve", job)
    with history.refusals_recorded(), transaction.atomic():
        history.lock()
        current = kind.model.objects.select_related(*kind.select_related).get(pk=job.pk)
        _refuse_unauthorised(kind, current, user, under_lock=True)
        for spec in kind.render(current):
            kill_switches.refuse_if_engaged(spec.asset, user, "job.approve", job, under_lock=True)
        queue_job(job, user, decided_by=user, decided_at=timezone.now())


def _refuse_unauthorised(kind, job, user, *, under_lock: bool = False) -> None:
    problem = kind.authority_problem(job)
    if problem:
        refused = history.Refused(
            Conflict(f"No authority: {problem}.", field=kind.authority_field),
            user,
            "job.approve",
            job,
            reason=f"no authority: {problem}",
            site_id=job.site_id,
            payload={"authority": {k: str(v) for k, v in kind.authority(job).items()}},
        )
        if under_lock:
            raise refused
        history.record_refusal(user, "job.approve", job, **refused.refusal)
        raise refused.error


def reject_job(job, user, reason: str) -> None:
    """A second person refuses a job that awaits approval, with the reason."""
    require_role(user, "approve", "job.reject", job, site_id=job.site_id)
    check_four_eyes(job, user, author_field="requested_by", action="job.reject")
    if not (reason or "").strip():
        raise InvalidInput("A rejection needs a reason.", field="reason")
    with transaction.atomic():
        transition_job(job, S.REJECTED, user, reason=reason.strip(), decided_by=user, decided_at=timezone.now())


# --- queueing ------------------------------------------------------------------------------


def issue_instructions(job, actor, *, wave_offset: int = 0) -> list[Instruction]:
    """Render the job through its kind, sign the instruction of its first step, queue it (each
    later step is issued once the one before ended: :func:`_finish_job`).

    Instructions are released in waves by their position (``wave_offset`` places this job's
    first instruction within a larger batch of jobs).
    """
    return issue_instructions_for([job], actor, wave_offset=wave_offset)


def issue_instructions_for(jobs: list, actor, *, wave_offset: int = 0) -> list[Instruction]:
    """:func:`issue_instructions` for many jobs of one kind at once: one agent look-up, one
    insert and one history append whatever their number; agents of the instructions released
    now are woken once the transaction commits. Each job's relations used by ``render`` and
    ``authority`` must already be loaded. Call inside the transaction that queues the jobs: the
    agents are looked up under the history's lock, so a revocation is seen or sees these."""
    if not jobs:
        return []
    kind = registry.kind_of(jobs[0])
    rendered = _first_steps(kind, jobs)
    history.lock()
    agents = _active_agents({spec.asset.pk for _, spec, _ in rendered})
    rows = _sign(kind, rendered, agents, wave_offset)
    _store(kind, rows, actor)
    return rows


def _first_steps(kind, jobs: list) -> list[tuple]:
    """(job, its first step, 0) for each job: a job's later steps wait for the one before."""
    rendered = []
    for job in jobs:
        specs = kind.render(job)
        steps.check(specs)
        rendered.append((job, specs[0], 0))
    return rendered


def _active_agents(asset_ids: set) -> dict:
    """asset id -> its enrolled, unrevoked agent's id (one query); every asset must have one."""
    agents = dict(Agent.objects.filter(asset_id__in=asset_ids, revoked_at__isnull=True).values_list("asset_id", "pk"))
    if len(agents) != len(asset_ids):
        raise InvalidInput("The asset has no enrolled agent.", field="asset")
    return agents


def _sign(
    kind,
    rendered: list,
    agents: dict,
    wave_offset: int,
    release_base: datetime | None = None,
    *,
    spread: bool = True,
) -> list[Instruction]:
    """Build and sign one unsaved instruction per (job, spec, step), the n-th released in wave
    n // ``RMM_WAVE_SIZE`` counted from ``release_base`` (by default now), or all at
    ``release_base`` without ``spread`` (a batch's ring). Every asset must have an agent."""
    keys = keyset.current()  # first: a key made now, for a new server's first signature, is valid from now
    now = timezone.now()
    release_base = release_base or now
    not_after = now + timedelta(seconds=settings.RMM_INSTRUCTION_TTL_SECONDS)
    stamps = {"issued_at": iso_utc(now), "not_after": iso_utc(not_after)}
    rows = []
    digests: dict[str, str] = {}  # a batch signs one content thousands of times: hash it once
    # Each agent's instructions are signed with the newest key it has acknowledged holding.
    acknowledged = dict(Agent.objects.filter(pk__in=set(agents.values())).values_list("pk", "signing_key_id"))
    signers: dict[str, keyset.Key] = {}
    for position, (job, spec, step) in enumerate(rendered, start=wave_offset):
        agent_id = agents[spec.asset.pk]
        if spec.interpreter not in INTERPRETERS:
            raise InvalidInput(f"Unsupported interpreter {spec.interpreter!r}.", field="interpreter")
        authority = kind.authority(job)
        digest = digests.get(spec.content)
        if digest is None:
            digest = digests[spec.content] = hashlib.sha256(spec.content.encode()).hexdigest()
        inst = Instruction(
            job_kind=kind.name,
            job_id=job.pk,
            step=step,
            site_id=spec.asset.site_id,
            asset_id=spec.asset.pk,
            agent_id=agent_id,
            interpreter=spec.interpreter,
            content=spec.content,
            content_sha256=digest,
            arguments=list(spec.arguments),
            timeout_seconds=spec.timeout_seconds,
            privileged=spec.privileged,
            psa_case_id=authority.get("psa_case_id"),
            psa_task_id=authority.get("psa_task_id"),
            issued_at=now,
            release_at=throttles.release_time(position, release_base) if spread else release_base,
            not_after=not_after,
        )
        inst.payload = canonical_json(
            {
                "instruction_id": str(inst.id),
                "agent_id": str(agent_id),
                "asset_id": str(spec.asset.pk),
                "job_kind": kind.name,
                "job_id": str(job.pk),
                "step": step,
                "interpreter": spec.interpreter,
                "content": spec.content,
                "content_sha256": inst.content_sha256,
                "arguments": inst.arguments,
                "timeout_seconds": spec.timeout_seconds,
                "privileged": spec.privileged,
                "authority": {key: str(value) if value else None for key, value in sorted(authority.items())},
                **stamps,
            }
        ).decode()
        held = acknowledged.get(agent_id, "")
        signer = signers.get(held)
        if signer is None:
            signer = signers[held] = keys.signer_for_agent(held, now)
        inst.key_id = signer.key_id
        inst.signature = keys.sign_with(signer, inst.payload.encode())
        rows.append(inst)
    return rows


def _store(kind, rows: list[Instruction], actor, via: str = "", before: Iterable = ()) -> None:
    """Insert signed instructions and their history; wake the agents of those released now.
    ``via`` names what issued them when it was not the actor's own request; ``before`` are the
    caller's events that come first in the same append (the history's lock is held from the
    append to the commit, so the caller's transaction should end soon after)."""
    bulk.insert_many(rows)
    extra = {"via": via} if via else {}
    history.append_many(
        itertools.chain(
            before,
            (
                history.Event(
                    history.actor_of(actor),
                    "instruction.issued",
                    "engine.instruction",
                    str(inst.pk),
                    inst.site_id,
                    {
                        "job_kind": kind.name,
                        "job_id": str(inst.job_id),
                        "asset_id": str(inst.asset_id),
                        "content_sha256": inst.content_sha256,
                        **extra,
                    },
                )
                for inst in rows
            ),
        )
    )
    now = timezone.now()
    events.wake_agents(inst.agent_id for inst in rows if inst.release_at <= now)


# --- batches: the first wave now, the later waves in the task cluster --------------------

# Job ids per task: the broker stores a task's arguments, and a task holds the history's lock
# (every lease and result waits for it) while it stores its instructions.
TASK_CHUNK = 1000


def queue_in_waves(jobs: list, actor, history_before: Iterable = ()) -> None:
    """Sign a batch's first wave now, in the caller's transaction, and leave the later waves to
    the task cluster, which signs them once this commits (:func:`issue_later_waves`), long
    before they are due. The jobs are new, queued rows of one kind.

    A 10,000-asset batch spent most of its request signing and recording instructions that
    would wait minutes for their wave (docs/performance.md). Every asset must have an enrolled
    agent now, as when all were signed at once; the laws are checked again, under the
    history's lock, when the later waves are stored. ``history_before`` (the jobs' own events)
    are appended first, with the first wave's, at the end of the work. Call inside the
    transaction that writes the jobs, after the caller checked authority and switches under the
    history's lock: the agents are looked up under it too.
    """
    if not jobs:
        return
    queued_at = timezone.now()
    kind = registry.kind_of(jobs[0])
    rendered = _first_steps(kind, jobs)  # one instruction per job: its first step
    history.lock()
    agents = _active_agents({spec.asset.pk for _, spec, _ in rendered})
    first = min(max(1, settings.RMM_WAVE_SIZE), len(jobs))
    _store(kind, _sign(kind, rendered[:first], agents, 0, queued_at), actor, before=history_before)
    for begin in range(first, len(jobs), TASK_CHUNK):
        enqueue_on_commit(
            "rmm.engine.tasks.issue_later_waves",
            kind.name,
            [str(job.pk) for job in jobs[begin : begin + TASK_CHUNK]],
            history.actor_of(actor),
            begin,
            queued_at.isoformat(),
        )


def issue_later_waves(
    kind_name: str,
    job_ids: list,
    actor: str,
    wave_offset: int,
    queued_at: datetime,
    now: datetime | None = None,
    via: str = "batch task",
    batch: Batch | None = None,
) -> int:
    """Sign and store the instructions of a batch's later waves (the jobs ``job_ids``, the
    first at ``wave_offset`` in a batch queued at ``queued_at``). Returns how many were stored.

    Signing takes seconds, so it happens first, outside any transaction; then, under the
    history's lock (:func:`rmm.history.services.lock`), the jobs still queued and not yet issued
    are looked at again: those that a kill switch covered at any time since they were queued,
    whose authority no longer holds, or whose agent was revoked end aborted, in bulk and without
    an instruction; the others' instructions are stored. Running it twice stores nothing twice.
    A task that runs late shifts the batch's later waves by its lateness: its first wave is
    released now, the next an interval later. With ``batch`` (a ring of a batch with a plan:
    :func:`rmm.engine.services.batches.issue_ring`) all are released at ``queued_at``, and
    nothing is stored unless the batch is still running when the lock is held.
    """
    kind = registry.get(kind_name)
    now = now or timezone.now()
    order = {str(pk): n for n, pk in enumerate(job_ids)}
    jobs = sorted(
        _not_issued(kind).filter(pk__in=job_ids).select_related(*kind.select_related),
        key=lambda job: order[str(job.pk)],
    )
    if not jobs:
        return 0
    rendered = _first_steps(kind, jobs)
    agents = _latest_agents({spec.asset.pk for _, spec, _ in rendered})
    # Measured from the batch's second wave, the same for every chunk of it: chunks that run in
    # order, each later than the one before, are shifted further each and never overlap.
    lateness = now - throttles.release_time(max(1, settings.RMM_WAVE_SIZE), queued_at)
    release_base = queued_at + max(lateness, timedelta(0)) if batch is None else queued_at
    signable = [(job, spec, step) for job, spec, step in rendered if spec.asset.pk in agents]
    signed = _sign(kind, signable, agents, wave_offset, release_base, spread=batch is None)
    with transaction.atomic():
        history.lock()  # from here, every switch, withdrawal and revocation is seen or follows us
        if batch is not None and not Batch.objects.filter(pk=batch.pk, status=BatchStatus.RUNNING).exists():
            return 0  # halted or stopped meanwhile: the jobs wait, unissued
        still = {
            job.pk: job
            for job in _not_issued(kind)
            .filter(pk__in=[job.pk for job in jobs])
            .select_for_update(of=("self",))
            .select_related(*kind.select_related)
            .order_by("pk")
        }
        reasons = _why_not(kind, still, rendered, agents)
        _abort_unissued(kind, reasons, "system")
        rows = [inst for inst in signed if inst.job_id in still and inst.job_id not in reasons]
        _store(kind, rows, actor, via=via)
    return len(rows)


def _not_issued(kind):
    """Queued jobs of ``kind`` without an instruction yet: a batch's later waves."""
    issued = Instruction.objects.filter(job_kind=kind.name, job_id=OuterRef("pk"))
    return kind.model.objects.filter(status=S.QUEUED).filter(~Exists(issued))


def _latest_agents(asset_ids) -> dict:
    """asset id -> its agent: the unrevoked one, else the last revoked (its job is then aborted)."""
    agents: dict = {}
    for asset_id, agent_id, revoked_at in (
        Agent.objects.filter(asset_id__in=asset_ids).order_by("enrolled_at").values_list("asset_id", "pk", "revoked_at")
    ):
        kept = agents.get(asset_id)
        if kept is None or kept[1] is not None:  # an unrevoked agent, once found, stays
            agents[asset_id] = (agent_id, revoked_at)
    return {asset_id: agent_id for asset_id, (agent_id, _) in agents.items()}


# Clocks of different server processes: a switch released this long before a job was created
# still counts as covering it (stricter, never looser, than signing at once).
CLOCK_SLACK = timedelta(seconds=5)


def _why_not(kind, jobs: dict, rendered: list, agents: dict) -> dict:
    """job id -> why it may no longer run, for the jobs that may not (call under the lock)."""
    if not jobs:
        return {}
    since = min(job.created_at for job in jobs.values()) - CLOCK_SLACK
    switches = list(
        KillSwitch.objects.filter(Q(released_at__isnull=True) | Q(released_at__gte=since)).select_related(
            "site", "asset"
        )
    )
    active = set(
        Agent.objects.filter(pk__in=set(agents.values()), revoked_at__isnull=True).values_list("pk", flat=True)
    )
    reasons = {}
    for rendered_job, spec, _ in rendered:
        job = jobs.get(rendered_job.pk)  # as read under the lock: its authority is current
        if job is None or job.pk in reasons:
            continue
        reason = _switch_over(switches, job, spec.asset)
        if not reason:
            problem = kind.authority_problem(job)
            reason = f"authority withdrawn: {problem}" if problem else ""
        if not reason and spec.asset.pk not in agents:
            reason = "the asset has no enrolled agent"
        elif not reason and agents[spec.asset.pk] not in active:
            reason = "the asset's agent was revoked while the job waited for its wave"
        if reason:
            reasons[job.pk] = reason
    return reasons


def _switch_over(switches: list[KillSwitch], job, asset) -> str:
    for switch in switches:
        if switch.covers(asset.site_id, asset.pk) and (
            switch.released_at is None or switch.released_at >= job.created_at - CLOCK_SLACK
        ):
            return f"kill switch engaged on {switch.target_label} while the job waited for its wave"
    return ""


def _abort_unissued(kind, reasons: dict, actor) -> int:
    """Queued jobs that got no instruction end aborted, with their reasons (through the one
    transition path). Call under the history's lock, which every issuing of a later wave holds:
    none of them can be issued meanwhile. No instruction, so no evidence."""
    return transitions.abort_queued_jobs(kind, reasons, actor, _not_issued(kind))


def issue_stranded(now: datetime, grace: timedelta | None = None) -> int:
    """Later waves whose task was lost (jobs queued over ``grace`` ago, default ten wave
    intervals or five minutes, with no instruction): issued now by :func:`issue_later_waves`,
    under the same checks, in the name of who requested them, in waves that follow the last
    wave already queued (never on top of it), at least one interval from now.
    """
    interval = timedelta(seconds=settings.RMM_WAVE_INTERVAL_SECONDS)
    grace = grace or max(timedelta(minutes=5), 10 * interval)
    count = 0
    for kind in registry.all_kinds():
        stranded = list(
            _not_issued(kind)
            .filter(created_at__lt=now - grace)
            .filter(  # a batch's rings not yet released (or just released) are not stranded, they wait
                Q(batch__isnull=True)
                | Q(batch__timed=True)
                | Q(
                    batch__status=BatchStatus.RUNNING,
                    ring__lt=F("batch__released_rings"),
                    batch__ring_released_at__lt=now - grace,
                )
            )
            .order_by("created_at", "pk")
            .values_list("pk", "requested_by")[:TASK_CHUNK]
        )
        by_requester: dict = {}
        for pk, requester in stranded:
            by_requester.setdefault(requester, []).append(pk)
        users = get_user_model().objects.in_bulk(list(by_requester))
        for requester, ids in by_requester.items():
            last = Instruction.objects.filter(status=S.QUEUED, release_at__gt=now).aggregate(last=Max("release_at"))
            start = max(now, last["last"] or now) + interval
            try:
                count += issue_later_waves(
                    kind.name, ids, history.actor_of(users[requester]), 0, start, now=now, via="sweep"
                )
            except Exception as exc:  # loud, and final: they would be picked first at every sweep
                logger.exception("issuing the later waves of %d %s jobs failed", len(ids), kind.name)
                with transaction.atomic():
                    history.lock()
                    reason = f"its instruction could not be issued: {exc!r}"[:500]
                    _abort_unissued(kind, dict.fromkeys(ids, reason), "system")
    return count


def queue_job(job, actor, **fields) -> None:
    """awaiting_approval (or new) → queued, with its signed instructions (a job of a batch: when
    its batch releases its ring)."""
    with transaction.atomic():
        transition_job(job, S.QUEUED, actor, **fields)
        if getattr(job, "batch_id", None) is not None:
            batches.job_approved(job, actor)
        else:
            issue_instructions(job, actor)


def job_instructions(job):
    return Instruction.objects.filter(job_kind=registry.kind_of(job).name, job_id=job.pk)


# --- the agent's hot path -----------------------------------------------------------------


@dataclass(frozen=True)
class CheckIn:
    """What every heartbeat needs to know besides the agent itself."""

    facts_hash: str | None  # the stored hash of the asset's facts
    switch: KillSwitch | None  # the engaged kill switch covering the asset
    work_waiting: bool  # queued, released, unexpired instructions for this agent
    keys_version: int  # the signing-key registry's version (rmm.keys.keyset.VERSION_SQL)


def check_in(agent: Agent, now: datetime, version: str, key_id: str | None = None) -> CheckIn:
    """Record that the agent was seen (and, with ``key_id``, the newest signing key it holds) and
    learn what its heartbeat needs: one statement.

    Every agent calls this forever, so its SQL is written once here rather than built through
    the ORM on every call, which cost most of a heartbeat's CPU (docs/performance.md).
    """
    agent_id, asset_id, site_id = (_uuid_param(pk) for pk in (agent.pk, agent.asset_id, agent.asset.site_id))
    moment = connection.ops.adapt_datetimefield_value(now)
    with connection.cursor() as cursor:
        params = [moment, version, key_id, agent_id, asset_id, site_id, asset_id, agent_id, S.QUEUED, moment, moment]
        cursor.execute(_CHECK_IN_SQL, params)
        facts_hash, switch_id, waiting, keys_version = cursor.fetchone()
    return CheckIn(facts_hash, _engaged_switch(switch_id), bool(waiting), int(keys_version))


def _uuid_param(value):
    return Agent._meta.pk.get_db_prep_value(value, connection)


@dataclass(frozen=True)
class Look:
    """What a woken held heartbeat finds."""

    switch: KillSwitch | None  # the engaged kill switch covering the asset
    work_waiting: bool  # released work waits, and the agent was not revoked while held
    rotating: bool  # a secret rotation was asked for (since the heartbeat began, perhaps)


def look_for_work(agent: Agent, now: datetime) -> Look:
    """For a held heartbeat that was woken: the engaged kill switch over this agent, if any,
    whether released work waits for it, and whether a rotation of its secret was asked for, all
    unless the agent was revoked while its heartbeat was held. One statement (two with a switch
    engaged)."""
    agent_id, asset_id, site_id = (_uuid_param(pk) for pk in (agent.pk, agent.asset_id, agent.asset.site_id))
    moment = connection.ops.adapt_datetimefield_value(now)
    with connection.cursor() as cursor:
        cursor.execute(_LOOK_SQL, [site_id, asset_id, agent_id, S.QUEUED, moment, moment, agent_id])
        switch_id, waiting, rotating = cursor.fetchone()
    active = rotating is not None  # NULL: revoked
    return Look(_engaged_switch(switch_id), bool(waiting) and active, bool(rotating) and active)


def _engaged_switch(switch_id) -> KillSwitch | None:
    """The switch a check-in statement found (rare: a second query only while one is engaged)."""
    return KillSwitch.objects.select_related("site", "asset").get(pk=switch_id) if switch_id else None


_SWITCH_SQL = (
    "(SELECT id FROM engine_killswitch WHERE released_at IS NULL AND (scope = 'global'"
    " OR (scope = 'site' AND site_id = %s) OR (scope = 'asset' AND asset_id = %s)) ORDER BY engaged_at LIMIT 1)"
)
_WAITING_SQL = (
    "EXISTS (SELECT 1 FROM engine_instruction WHERE agent_id = %s AND status = %s"
    " AND not_after > %s AND release_at <= %s)"
)
_FACTS_SQL = "(SELECT facts_hash FROM inventory_assetfacts WHERE asset_id = %s)"
# The statements below are built from the constants above only; every value is a parameter.
# The check-in is one round trip: the agent is seen, and learns what its heartbeat needs
# (RETURNING: PostgreSQL, and SQLite 3.35+).
_CHECK_IN_SQL = (
    "UPDATE inventory_agent SET last_seen_at = %s, version = %s,"  # noqa: S608
    " signing_key_id = COALESCE(%s, signing_key_id) WHERE id = %s"
    f" RETURNING {_FACTS_SQL}, {_SWITCH_SQL}, {_WAITING_SQL}, {keyset.VERSION_SQL}"
)
_LOOK_SQL = (
    f"SELECT {_SWITCH_SQL}, {_WAITING_SQL},"  # noqa: S608
    " (SELECT rotation_requested_at IS NOT NULL FROM inventory_agent WHERE id = %s AND revoked_at IS NULL)"
)


def lease(agent: Agent, capacity: int, now: datetime, switch=None) -> list[Instruction]:
    """Lease this agent's next queued instructions, under the kill switch and the throttles.

    SKIP LOCKED on PostgreSQL lets any number of web workers serve agents. A constant
    number of queries whatever the fleet size.
    """
    capacity = max(0, min(int(capacity), settings.RMM_MAX_LEASE_PER_HEARTBEAT))
    if capacity == 0:
        return []
    with transaction.atomic():
        if settings.RMM_MAX_RUNNING_PER_ASSET:
            running_here = Instruction.objects.filter(agent=agent, status=S.RUNNING).count()
            # One at a time per asset (by default): the rest wait, in order.
            capacity = min(capacity, settings.RMM_MAX_RUNNING_PER_ASSET - running_here)
            if capacity <= 0:
                return []
        rows = list(
            _with_authority(
                Instruction.objects.select_for_update(skip_locked=True).filter(
                    agent=agent, status=S.QUEUED, not_after__gt=now, release_at__lte=now
                )
            ).order_by("issued_at", "step")[:capacity]
        )
        rows = _abort_unauthorised(rows, now)
        if not rows:
            return []
        room, held = throttles.room_under_ceilings(rows[0].site_id)
        if switch is not None:
            held = "kill switch engaged on " + switch.target_label
        if held:
            history.record_refusal(
                agent,
                "lease",
                reason=held,
                site_id=rows[0].site_id,
                payload={"held_instructions": [str(inst.pk) for inst in rows]},
            )
            return []
        rows = rows[:room]
        grace = timedelta(seconds=settings.RMM_LEASE_GRACE_SECONDS)
        leased = transitions.lease_instructions(rows, agent, now, grace)
        by_kind: dict[str, set] = {}
        for inst in rows:
            by_kind.setdefault(inst.job_kind, set()).add(inst.job_id)
        started = [
            event
            for kind_name, job_ids in by_kind.items()
            for event in transitions.start_jobs(registry.get(kind_name), job_ids, agent, now)
        ]
        history.append_many(started + leased)  # one append: the jobs that started, then the leases
    return rows


def _with_authority(instructions):
    """The instructions with their PSA case's and task's status, expiry and site, in the same
    statement: the lease re-checks authority without a query per instruction."""
    case = PsaCase.objects.filter(pk=OuterRef("psa_case_id"))
    task = PsaTask.objects.filter(pk=OuterRef("psa_task_id"))
    return instructions.annotate(
        authority_case_status=Subquery(case.values("status")[:1]),
        authority_case_expires_at=Subquery(case.values("expires_at")[:1]),
        authority_case_site=Subquery(case.values("site_id")[:1], output_field=UUIDField()),
        authority_task_status=Subquery(task.values("status")[:1]),
        authority_task_expires_at=Subquery(task.values("expires_at")[:1]),
    )


def authority_gone_at_lease(inst: Instruction, now: datetime) -> str | None:
    """Why the authority an instruction was issued on no longer holds (withdrawn, closed, expired,
    or its case moved to another site), from the columns :func:`_with_authority` added; None when
    it holds or the instruction names none."""
    if inst.psa_case_id is None and inst.psa_task_id is None:
        return None
    if inst.psa_case_id is not None and inst.authority_case_status is None:
        return "the PSA case is gone"
    if inst.psa_task_id is not None and inst.authority_task_status is None:
        return "the PSA task is gone"
    gone = authority_gone(
        inst.authority_case_status or AuthorityStatus.APPROVED,
        inst.authority_case_expires_at,
        inst.authority_task_status,
        inst.authority_task_expires_at,
        now,
    )
    if gone:
        return gone
    if inst.psa_case_id is not None and inst.authority_case_site != inst.site_id:
        return "the asset is outside the PSA case's site"
    return None


def _abort_unauthorised(rows: list[Instruction], now: datetime) -> list[Instruction]:
    """Of the instructions about to be leased, those whose authority is gone end aborted now, as
    the minute's sweep would end them (it may not have run since an expiry, or a withdrawal may
    have come between a job's check and its queueing); the others are returned."""
    kept = []
    for inst in rows:
        problem = authority_gone_at_lease(inst, now)
        if problem is None:
            kept.append(inst)
            continue
        try:
            end_instruction(inst, S.QUEUED, S.ABORTED, "system", f"authority withdrawn: {problem} (found at lease)")
        except Exception:  # never leased all the same; the sweep tries again
            logger.exception("lease: instruction %s without authority could not be aborted", inst.pk)
    return kept


def envelope(inst: Instruction) -> dict:
    """What the agent gets. An instruction from before key ids was signed with the server's one
    key then, which an upgraded server holds as its first instruction key."""
    return {"payload": inst.payload, "signature": inst.signature, "key_id": inst.key_id or keyset.cached().first_id()}


def to_abort(agent: Agent, running_ids: list, switch=None) -> list[str]:
    """Of the instructions the agent says it is running, those it must kill now: all of them
    under an engaged kill switch, otherwise those the server has already ended or marked.

    Running ones that the switch alone stops (engaged without its scan reaching them: a raced
    lease, a switch written behind the service's back) are marked and recorded here, as the
    engage's scan would have: ``instruction.abort_requested`` with the switch as the reason."""
    if not running_ids:
        return []
    ids = [pk for pk in (_uuid_or_none(i) for i in running_ids[:100]) if pk]
    wanted = Q(status__in=FINAL) | Q(status=S.RUNNING, abort_reason__gt="")
    if switch is not None:
        wanted |= Q(status=S.RUNNING)
    found = list(
        Instruction.objects.filter(wanted, agent=agent, pk__in=ids).values_list(
            "pk", "status", "abort_reason", "site_id"
        )
    )
    unmarked = [(pk, site_id) for pk, status, reason, site_id in found if status == S.RUNNING and not reason]
    if unmarked and switch is not None:
        reason = f"kill switch engaged on {switch.target_label}: {switch.reason}"
        with transaction.atomic():
            Instruction.objects.filter(pk__in=[pk for pk, _ in unmarked], status=S.RUNNING, abort_reason="").update(
                abort_reason=reason[:2000]
            )
            history.append_many(
                history.Event(
                    history.actor_of(agent),
                    "instruction.abort_requested",
                    "engine.instruction",
                    str(pk),
                    site_id,
                    {"reason": reason, "kill_switch": str(switch.pk), "via": "heartbeat"},
                )
                for pk, site_id in unmarked
            )
    return [str(pk) for pk, _, _, _ in found]


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
    inst = Instruction.objects.filter(pk=_uuid_or_none(body["instruction_id"]), agent=agent).first()
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
        _finish_job(inst, agent, result)
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


def _finish_job(inst: Instruction, actor, result: dict) -> None:
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
    rows = _sign(kind, [(job, spec, step)], {spec.asset.pk: before.agent_id}, 0)
    _store(kind, rows, "system", via=f"step {step} of job {job.pk} ended")
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


def _uuid_or_none(value):
    try:
        return uuid.UUID(str(value))
    except (ValueError, TypeError):
        return None


def expire_approvals(now: datetime | None = None) -> int:
    """Jobs left awaiting approval past the TTL become rejected, with the reason, by the system."""
    now = now or timezone.now()
    cutoff = now - timedelta(hours=settings.RMM_APPROVAL_TTL_HOURS)
    reason = f"approval expired after {settings.RMM_APPROVAL_TTL_HOURS} h"
    count = 0
    for kind in registry.all_kinds():
        for job in kind.model.objects.filter(status=S.AWAITING_APPROVAL, created_at__lt=cutoff)[:1000]:
            try:
                with transaction.atomic():
                    transition_job(job, S.REJECTED, "system", reason=reason, decided_at=now)
                count += 1
            except Conflict:
                continue  # decided meanwhile
    return count


def end_instruction(inst: Instruction, from_status: str, to: str, actor, reason: str) -> bool:
    """End an instruction the agent did not report on (lost, or aborted before it started)."""
    with transaction.atomic():
        if not transition_instruction(
            inst,
            to,
            actor,
            payload={"reason": reason},
            only_from=[from_status],
            finished_at=timezone.now(),
            reason=reason,
        ):
            return False
        _finish_job(inst, actor, {"outcome": to, "reason": reason})
    return True


def stop_instructions(instructions, actor, reason: str) -> int:
    """Stop work: queued instructions end aborted now; running ones are marked, and their agent,
    woken, kills them at its next heartbeat and reports what they printed until then. One that
    cannot be ended stops no other; the first such failure is raised at the end."""
    count = 0
    failed = None
    # A list, not a cursor: a task enqueued on commit may close the connection under an open cursor.
    for inst in list(instructions.filter(status=S.QUEUED)):
        try:
            count += end_instruction(inst, S.QUEUED, S.ABORTED, actor, reason)
        except Exception as exc:  # one that cannot be ended (its evidence not stored) stops no other
            logger.exception("instruction %s could not be aborted", inst.pk)
            failed = failed or exc
    running = list(instructions.filter(status=S.RUNNING, abort_reason="").values_list("pk", "site_id", "agent_id"))
    if running:
        with transaction.atomic():
            Instruction.objects.filter(pk__in=[pk for pk, _, _ in running], status=S.RUNNING).update(
                abort_reason=reason[:2000]
            )
            history.append_many(
                history.Event(
                    history.actor_of(actor),
                    "instruction.abort_requested",
                    "engine.instruction",
                    str(pk),
                    site_id,
                    {"reason": reason},
                )
                for pk, site_id, _ in running
            )
            events.wake_agents(agent_id for _, _, agent_id in running)  # killed now, not at the next heartbeat
    if failed is not None:
        raise failed  # the caller learns, once every other instruction is stopped
    return count + len(running)


def abort_agent_work(agent: Agent, actor, reason: str) -> int:
    """The agent was revoked: it can lease nothing more and report nothing more, so its queued
    and running instructions end aborted now (its jobs with them), each recorded; its held
    heartbeat, if any, is woken and answered with the running ones to kill. One instruction that
    cannot be ended stops no other; the first such failure is raised at the end. Returns how
    many were ended."""
    count = 0
    failed = None
    active = Instruction.objects.filter(agent_id=agent.pk, status__in=[S.QUEUED, S.RUNNING]).order_by("issued_at")
    for inst in list(active):
        try:
            ended = end_instruction(inst, inst.status, S.ABORTED, actor, reason)
            # A lease that began before the revocation committed may have taken it meanwhile: end
            # it as running (the agent is refused from its next call on, and kills it then).
            leased = Instruction.objects.filter(pk=inst.pk, status=S.RUNNING)
            if not ended and inst.status == S.QUEUED and leased.exists():
                inst.status = S.RUNNING
                ended = end_instruction(inst, S.RUNNING, S.ABORTED, actor, reason)
            count += ended
        except Exception as exc:
            logger.exception("instruction %s of revoked agent %s could not be aborted", inst.pk, agent.pk)
            failed = failed or exc
    events.wake_agents([agent.pk])  # a held heartbeat learns of the aborts now
    if failed is not None:
        raise failed
    return count


def withdraw_authority(actor, reason: str, *, case_id=None, task_id=None) -> int:
    """Upstream authority was withdrawn or expired: the work it covered stops (Law 1 holds after creation too).

    Jobs of a batch's later waves with no instruction yet end aborted first, under the history's
    lock, so that no later wave is issued on authority granted again before this ran; then the
    instructions issued so far (including any issued just before) are stopped.
    """
    key, value = ("psa_task_id", task_id) if task_id is not None else ("psa_case_id", case_id)
    if value is None:
        raise ValueError("name a case or a task")
    reason = f"authority withdrawn: {reason}"
    aborted = 0
    for kind in registry.all_kinds():
        lookup = kind.authority_lookups.get(key)
        if lookup is None:
            continue
        with transaction.atomic():
            history.lock()
            ids = _not_issued(kind).filter(**{lookup: value}).values_list("pk", flat=True)
            aborted += _abort_unissued(kind, dict.fromkeys(ids, reason), actor)
    active = Instruction.objects.filter(status__in=[S.QUEUED, S.RUNNING], **{key: value})
    return aborted + stop_instructions(active, actor, reason)


def withdraw_expired_authority(now: datetime | None = None) -> int:
    """Stop work whose PSA case or task expired since it was queued: its instructions, and the
    jobs of later waves that have none yet."""
    now = now or timezone.now()
    count = 0
    for model, key, name in ((PsaCase, "psa_case_id", "case"), (PsaTask, "psa_task_id", "task")):
        covered = Q(pk__in=Instruction.objects.filter(status__in=[S.QUEUED, S.RUNNING], abort_reason="").values(key))
        for kind in registry.all_kinds():
            if key in kind.authority_lookups:
                covered |= Q(pk__in=_not_issued(kind).values(kind.authority_lookups[key]))
        for pk in list(model.objects.filter(covered, expires_at__lt=now).values_list("pk", flat=True)):
            try:
                count += withdraw_authority("system", f"PSA {name} expired", **{f"{name}_id": pk})
            except Exception:  # each case or task alone: the next sweep tries it again
                logger.exception("sweep: stopping the work of expired PSA %s %s failed", name, pk)
    return count


def sweep(now: datetime | None = None) -> int:
    """Instructions whose lease ran out, or that no agent leased in time, become lost (never
    re-run); work under expired authority stops; lost later waves are issued; agents not seen
    for a while become offline, and online again once seen; the windows of unauthenticated
    callers' refusals that ended are closed (their counts recorded).

    Each step, and each instruction, fails alone: the failure is logged (an instruction that
    could not be ended stays as it was and is tried again at the next sweep) and the rest goes on.
    """
    now = now or timezone.now()
    overdue = Instruction.objects.filter(status=S.RUNNING, lease_expires_at__lt=now) | Instruction.objects.filter(
        status=S.QUEUED, not_after__lt=now
    )
    count = 0
    for inst in list(overdue[:1000]):
        reason = "agent never reported within its lease" if inst.status == S.RUNNING else "no agent leased it in time"
        try:
            count += end_instruction(inst, inst.status, S.LOST, "system", reason)
        except Exception:
            logger.exception(
                "sweep: instruction %s could not be marked lost (%s); next sweep tries again", inst.pk, reason
            )
    steps = (withdraw_expired_authority, issue_stranded, batches.sweep, inventory.mark_presence)
    for step in (*steps, inventory.close_refusal_windows):
        try:
            count += step(now)
        except Exception:
            logger.exception("sweep: %s failed; the other steps went on", step.__name__)
    return count
