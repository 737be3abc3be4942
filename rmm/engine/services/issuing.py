"""Issuing: a queued job's instructions rendered, signed and stored, at once or in waves (a
batch's later waves signed by the task cluster, and by the sweep when their task was lost), each
later wave re-checked under the history's lock; a job's queueing after its approval."""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Exists, F, Max, OuterRef, Q
from django.utils import timezone

from rmm.core import bulk
from rmm.core.errors import InvalidInput
from rmm.core.on_commit import enqueue_on_commit
from rmm.engine import events, registry
from rmm.engine.models import Batch, BatchStatus, Instruction, KillSwitch
from rmm.engine.services import batches, fetching, steps, throttles, transitions
from rmm.engine.states import JobStatus
from rmm.history import services as history
from rmm.inventory.models import Agent
from rmm.keys import keyset
from rmm_agent.protocol import (
    AGENT_ACTIONS,
    CAPABILITY_LIVE_OUTPUT,
    CAPABILITY_REBOOT,
    INTERPRETERS,
    canonical_json,
    iso_utc,
)

S = JobStatus
logger = logging.getLogger(__name__)

# A step held for its agent to come back from a reboot: released at its not_after, which no lease
# takes (leases want release_at <= now < not_after), until the agent's return releases it now.
HELD = Q(status=S.QUEUED, release_at=F("not_after"))


def issue_instructions(job, actor, *, wave_offset: int = 0) -> list[Instruction]:
    """Render the job through its kind, sign the instruction of its first step, queue it (each
    later step is issued once the one before ended: :func:`rmm.engine.services.results.finish_job`).

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
    """(job, its first step, 0) for each job: a job's later steps wait for the one before. A job
    of a kind whose steps are optional that renders none has no instruction (its kind carries it)."""
    rendered = []
    for job in jobs:
        specs = kind.render(job)
        if not specs and kind.steps_optional:
            continue
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
    hold: timedelta | None = None,
) -> list[Instruction]:
    """Build and sign one unsaved instruction per (job, spec, step), the n-th released in wave
    n // ``RMM_WAVE_SIZE`` counted from ``release_base`` (by default now), or all at
    ``release_base`` without ``spread`` (a batch's ring). Every asset must have an agent, and
    one that can do what each step needs (a reboot). With ``hold`` (a step after a reboot) each
    is held: released at its ``not_after``, ``hold`` later than usual, that is never, until its
    agent comes back (:data:`HELD`). A job's first step in a batch whose kind has a window
    (:attr:`rmm.engine.registry.JobKind.window`) is released no earlier than the window opens and
    expires when it closes: never leased outside it."""
    keys = keyset.current()  # first: a key made now, for a new server's first signature, is valid from now
    now = timezone.now()
    release_base = release_base or now
    not_after = now + (hold or timedelta(0)) + timedelta(seconds=settings.RMM_INSTRUCTION_TTL_SECONDS)
    if hold is not None:
        release_base, spread = not_after, False
    windows = _windows(kind, rendered, now)
    rows = []
    digests: dict[str, str] = {}  # a batch signs one content thousands of times: hash it once
    # Each agent's instructions are signed with the newest key it has acknowledged holding.
    acknowledged, capable = {}, {}
    for pk, key_id, capabilities in Agent.objects.filter(pk__in=set(agents.values())).values_list(
        "pk", "signing_key_id", "capabilities"
    ):
        acknowledged[pk], capable[pk] = key_id, capabilities.split(",")
    signers: dict[str, keyset.Key] = {}
    for position, (job, spec, step) in enumerate(rendered, start=wave_offset):
        agent_id = agents[spec.asset.pk]
        if spec.interpreter not in INTERPRETERS + AGENT_ACTIONS:
            raise InvalidInput(f"Unsupported interpreter {spec.interpreter!r}.", field="interpreter")
        if spec.reboot and CAPABILITY_REBOOT not in capable.get(agent_id, ()):
            raise InvalidInput(
                f"The agent of {spec.asset.hostname} cannot reboot its endpoint (it is older than the step needs).",
                field="asset",
            )
        authority = kind.authority(job)
        # a script's output is streamed by an agent that can (absent otherwise: signed as before)
        live = spec.interpreter in INTERPRETERS and CAPABILITY_LIVE_OUTPUT in capable.get(agent_id, ())
        release_at = throttles.release_time(position, release_base) if spread else release_base
        expires = not_after
        window = windows.get(job.batch_id) if step == 0 and windows else None
        if window is not None:
            release_at = max(release_at, window.opens)
            expires = min(expires, window.closes or expires)
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
            release_at=release_at,
            not_after=expires,
        )
        named = {}
        if spec.artefacts:  # absent otherwise: a payload without artefacts is as protocol 1 had it
            until = int(expires.timestamp()) + spec.timeout_seconds
            named["artefacts"], inst.artefacts = fetching.signed_entries(agent_id, inst.id, spec.artefacts, until)
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
                **named,
                "issued_at": iso_utc(now),
                "not_after": iso_utc(expires),
                **({"reboot": spec.reboot} if spec.reboot else {}),
                **({"live_output": True} if live else {}),
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


def _windows(kind, rendered: list, now: datetime) -> dict:
    """batch id -> the window its jobs' first steps may start in, for a kind that has windows (one
    query, none for other kinds)."""
    if kind.window is None:
        return {}
    ids = {job.batch_id for job, _, step in rendered if step == 0 and job.batch_id is not None}
    return {pk: batches.window_of(batch, now) for pk, batch in Batch.objects.in_bulk(ids).items()}


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
            waves = Instruction.objects.filter(status=S.QUEUED, release_at__gt=now).exclude(HELD)  # not a wave
            last = waves.aggregate(last=Max("release_at"))
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
        transitions.transition_job(job, S.QUEUED, actor, **fields)
        if getattr(job, "batch_id", None) is not None:
            batches.job_approved(job, actor)
        else:
            issue_instructions(job, actor)


def job_instructions(job):
    return Instruction.objects.filter(job_kind=registry.kind_of(job).name, job_id=job.pk)
