"""Batches: one job request over many assets, released ring by ring (docs/psa-integration.md#batches).

A batch with a plan releases a canary ring of ``canary`` jobs, then rings of ``ring_size`` jobs
(or ``ring_percent`` of the batch), each ``growth`` times the one before. A ring is released when
every job of the ring before it has finished and ``interval_seconds`` have passed since that
ring's release: checked after every job that ends (in its transaction, a constant number of
queries) and by the minute's sweep. After every failed result the batch's failed results
(failed, timed out, lost) are compared with all its results so far; past
``failure_threshold_percent`` the batch halts: nothing more is released, running jobs finish,
``batch.halted`` goes to the outbox, and only an approver who did not request it resumes it.

A batch without a plan keeps the global waves (``RMM_WAVE_SIZE`` every
``RMM_WAVE_INTERVAL_SECONDS``, on the clock, signed ahead by the task cluster:
:func:`rmm.engine.services.issuing.queue_in_waves`); its rings are those waves, and it never halts.
Every ring's instructions are issued under the same re-checks as the later waves (kill switches,
authority, revoked agents: docs/security.md, "Batches").
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F
from django.utils import timezone

from rmm.access import roles as access
from rmm.core.errors import Conflict, Forbidden, InvalidInput
from rmm.core.on_commit import enqueue_on_commit
from rmm.engine import events, registry
from rmm.engine.models import Batch, BatchStatus, KillSwitch, KillSwitchScope
from rmm.engine.services import issuing
from rmm.engine.states import ACTIVE, JobStatus
from rmm.history import services as history
from rmm.outbox import services as outbox

S = JobStatus
B = BatchStatus
HALTED_EVENT = "batch.halted"
MAX_RING = 50_000
FAILED = frozenset({S.FAILED, S.TIMED_OUT, S.LOST})
RESULTS = FAILED | {S.SUCCEEDED}
# (field, integer?, lowest, highest): the plan's numbers and their ranges.
PLAN_FIELDS = {
    "canary": (True, 1, MAX_RING),
    "ring_size": (True, 1, MAX_RING),
    "ring_percent": (False, 0.01, 100),
    "growth": (False, 1, 10),
    "interval_seconds": (True, 0, 7 * 24 * 3600),
    "failure_threshold_percent": (False, 0, 100),
}


# --- the plan -------------------------------------------------------------------------------


def default_plan() -> dict:
    """Today's global wave settings, as a plan (a batch without a plan never halts)."""
    wave = max(1, settings.RMM_WAVE_SIZE)
    return {
        "canary": wave,
        "ring_size": wave,
        "growth": 1,
        "interval_seconds": settings.RMM_WAVE_INTERVAL_SECONDS,
        "failure_threshold_percent": 100,
    }


def check_plan(plan: object) -> dict | None:
    """The plan a caller gave, complete with defaults; None for none. Bad input: 400 with the
    field as ``plan.<name>``."""
    if plan is None:
        return None
    if not isinstance(plan, dict):
        raise InvalidInput("Must be an object.", field="plan")
    for name in plan:
        if name not in PLAN_FIELDS:
            raise InvalidInput(f"Unknown; a plan takes {', '.join(PLAN_FIELDS)}.", field=f"plan.{name}")
    if plan.get("ring_size") is not None and plan.get("ring_percent") is not None:
        raise InvalidInput("Give ring_size or ring_percent, not both.", field="plan.ring_percent")
    checked = default_plan()
    if plan.get("ring_percent") is not None:
        del checked["ring_size"]
    for name, value in plan.items():
        if value is None:
            continue
        integer, low, high = PLAN_FIELDS[name]
        number = isinstance(value, int) or (not integer and isinstance(value, float) and math.isfinite(value))
        if isinstance(value, bool) or not number or not low <= value <= high:
            kind = "an integer" if integer else "a number"
            raise InvalidInput(f"Must be {kind} from {low} to {high}.", field=f"plan.{name}")
        checked[name] = value
    return checked


def ring_sizes(plan: dict, total: int) -> list[int]:
    """How many jobs each ring of a batch of ``total`` holds, the canary first."""
    sizes = [min(plan["canary"], total)]
    left = total - sizes[0]
    size = float(plan.get("ring_size") or max(1, math.ceil(total * plan["ring_percent"] / 100)))
    while left > 0:
        sizes.append(min(left, max(1, round(size))))
        left -= sizes[-1]
        size = min(size * plan["growth"], MAX_RING)
    return sizes


# --- starting -------------------------------------------------------------------------------


def assign(jobs: list, user, plan: dict | None) -> Batch:
    """Make the jobs' batch (``plan`` as :func:`check_plan` returned it; None: the global waves)
    and place each job in its ring, in the jobs' order. Call inside the transaction that inserts
    the jobs, before it inserts them; all are new and of one kind, site and status."""
    kind = registry.kind_of(jobs[0])
    awaiting = jobs[0].status == S.AWAITING_APPROVAL
    batch = Batch.objects.create(
        job_kind=kind.name,
        site_id=jobs[0].site_id,
        requested_by=user,
        status=B.AWAITING_APPROVAL if awaiting else B.RUNNING,
        plan=plan or default_plan(),
        timed=plan is None,
        ring_sizes=ring_sizes(plan or default_plan(), len(jobs)),
    )
    ring, end = 0, batch.ring_sizes[0]
    for position, job in enumerate(jobs):
        while position >= end:
            ring += 1
            end += batch.ring_sizes[ring]
        job.batch, job.ring = batch, ring
    return batch


def start(jobs: list, user, history_before: Iterable = ()) -> Batch:
    """Record the batch made by :func:`assign` and, if its jobs are queued, release its first ring
    now, in the caller's transaction (a batch without a plan: its first wave now, the later ones
    by the task cluster). Call under the history's lock, after the caller checked the laws under it; every
    asset must have an enrolled agent. ``history_before`` (the jobs' own events) come first."""
    batch = jobs[0].batch
    before = [*history_before, _event(user, "batch.created", batch, _created(batch, len(jobs)))]
    if batch.status == B.AWAITING_APPROVAL:
        history.append_many(before)
        return batch
    now = timezone.now()
    if batch.timed:
        _mark_released(batch, len(batch.ring_sizes), now)
        issuing.queue_in_waves(jobs, user, history_before=before)
        return batch
    window = window_of(batch, now)
    if window is not None and not window.open_at(now):
        history.append_many(before)
        _held(batch, now)  # the sweep releases its canary when the window opens
        return batch
    _mark_released(batch, 1, now)
    kind = registry.kind_of(jobs[0])
    rendered = issuing._first_steps(kind, jobs)  # one instruction per job: its first step
    agents = issuing._active_agents({spec.asset.pk for _, spec, _ in rendered})  # all of them, now
    canary = [(job, spec, step) for job, spec, step in rendered if job.ring == 0]
    issuing._store(kind, issuing._sign(kind, canary, agents, 0, now, spread=False), user, before=before)
    return batch


def _created(batch: Batch, count: int) -> dict:
    return {"kind": batch.job_kind, "jobs": count, "plan": batch.plan, "rings": batch.ring_sizes, "timed": batch.timed}


def _mark_released(batch: Batch, rings: int, now: datetime) -> None:
    Batch.objects.filter(pk=batch.pk).update(released_rings=rings, ring_released_at=now, held_until=None)
    batch.released_rings, batch.ring_released_at, batch.held_until = rings, now, None


def _event(actor, action: str, batch: Batch, payload: dict) -> history.Event:
    return history.Event(history.actor_of(actor), action, "engine.batch", str(batch.pk), batch.site_id, payload)


# --- after each job ---------------------------------------------------------------------------


def job_approved(job, actor) -> None:
    """A job of a batch was approved (it is queued now): a batch without a plan issues it at once,
    as before batches; a batch with one waits until none of its jobs awaits a decision, then
    releases its canary. Call in the approval's transaction."""
    batch = Batch.objects.select_for_update().get(pk=job.batch_id)
    if batch.timed:
        issuing.issue_instructions(job, actor)
    _begin_if_decided(batch, actor)


def jobs_finished(jobs: list) -> None:
    """Jobs reached a final status (call in their transaction, after their history): each batch
    counts its results, halts past its threshold, releases its next ring or completes. Three
    queries per batch among them, none for a job of no batch."""
    counts: dict = {}
    for job in jobs:
        if getattr(job, "batch_id", None) is not None:
            results, failed = counts.get(job.batch_id, (0, 0))
            counts[job.batch_id] = (results + int(job.status in RESULTS), failed + int(job.status in FAILED))
    for batch_id in sorted(counts, key=str):  # one order for every path: no deadlock between two
        _after_end(batch_id, *counts[batch_id])


def jobs_ended(kind: registry.JobKind, job_ids: list) -> None:
    """Jobs ended in bulk without a result (aborted before they were issued): their batches move on."""
    for batch_id in set(
        kind.model.objects.filter(pk__in=job_ids, batch__isnull=False).values_list("batch_id", flat=True)
    ):
        _after_end(batch_id, 0, 0)


def _after_end(batch_id, results: int, failed: int) -> None:
    # The history's lock before the batch's row, the order of every path that takes both (a kill
    # switch's engage holds the history's lock when it stops batches); a result's own history is
    # appended at its end (history.deferred), after this.
    history.lock()
    batch = Batch.objects.select_for_update().get(pk=batch_id)
    if results:
        Batch.objects.filter(pk=batch_id).update(results=F("results") + results, failed=F("failed") + failed)
        batch.results, batch.failed = batch.results + results, batch.failed + failed
    if batch.status == B.AWAITING_APPROVAL:  # the last decision a rejection: started in the requester's name
        _begin_if_decided(batch, batch.requested_by)
    elif failed and batch.status == B.RUNNING and _past_threshold(batch):
        threshold = batch.plan["failure_threshold_percent"]
        _halt(batch, f"{batch.failed} of {batch.results} finished jobs failed, past the threshold of {threshold} %")
    else:
        advance(batch, timezone.now(), via="result")


def _past_threshold(batch: Batch) -> bool:
    return batch.failed * 100 > batch.plan["failure_threshold_percent"] * batch.results


def _open(batch: Batch):
    return registry.get(batch.job_kind).model.objects.filter(batch_id=batch.pk, status__in=ACTIVE)


def _begin_if_decided(batch: Batch, actor) -> None:
    """An awaiting batch none of whose jobs awaits a decision any more starts (or, every job
    rejected, completes)."""
    if batch.status != B.AWAITING_APPROVAL or _open(batch).filter(status=S.AWAITING_APPROVAL).exists():
        return
    now = timezone.now()
    status = B.RUNNING if _open(batch).exists() else B.COMPLETED
    Batch.objects.filter(pk=batch.pk).update(status=status)
    batch.status = status
    history.append(actor, f"batch.{status}", batch, site_id=batch.site_id, payload={"reason": "every job decided"})
    if status == B.RUNNING and batch.timed:
        _mark_released(batch, len(batch.ring_sizes), now)  # each issued when it was approved
    elif status == B.RUNNING and not _held(batch, now):
        _release(batch, 0, actor, now, via="approval")  # held: the sweep releases it when its window opens
    _announce(batch)


def advance(batch: Batch, now: datetime, *, via: str, actor=None) -> None:
    """Release the batch's next ring if its time has come, in ``actor``'s name (by default its
    requester's), or mark it completed if every job has finished. Call under the history's lock
    with the batch's row locked."""
    if batch.status != B.RUNNING:
        return
    rings = len(batch.ring_sizes)
    if batch.released_rings >= rings:
        # The jobs of earlier rings ended before the last one was released (a batch without a plan:
        # all were released at once).
        last = _open(batch) if batch.timed else _open(batch).filter(ring=rings - 1)
        if not last.exists():
            Batch.objects.filter(pk=batch.pk, status=B.RUNNING).update(status=B.COMPLETED)
            batch.status = B.COMPLETED
            history.append("system", "batch.completed", batch, site_id=batch.site_id, payload=_counts(batch))
            _announce(batch)
        return
    if _open(batch).filter(ring=batch.released_rings - 1).exists():
        return
    interval = timedelta(seconds=batch.plan["interval_seconds"])
    if batch.ring_released_at and now < batch.ring_released_at + interval:
        return  # the sweep releases it once the interval has passed
    if _held(batch, now):
        return  # the sweep releases it once its window opens
    _release(batch, batch.released_rings, actor or batch.requested_by, now, via=via)


def window_of(batch: Batch, now: datetime) -> registry.Window | None:
    """The window the batch's work may start in, as its kind says (None: at any time)."""
    kind = registry.get(batch.job_kind)
    return kind.window(batch, now) if kind.window is not None else None


def _held(batch: Batch, now: datetime) -> bool:
    """Is the batch's next ring due while its kind's window is closed? Then it waits until the
    window opens, said once per opening in the history (``batch.held``) and on the batch
    (``held_until``); a ring released clears it."""
    window = window_of(batch, now)
    if window is None or window.open_at(now):
        return False
    if batch.held_until != window.opens:
        Batch.objects.filter(pk=batch.pk).update(held_until=window.opens)
        batch.held_until = window.opens
        payload = {"ring": batch.released_rings, "until": window.opens.isoformat()}
        history.append("system", "batch.held", batch, site_id=batch.site_id, payload=payload)
        _announce(batch)
    return True


def _release(batch: Batch, ring: int, actor, now: datetime, *, via: str) -> None:
    """Mark ``ring`` released, in ``actor``'s name (who requested the batch, or approved it last);
    the task cluster issues its instructions once this commits
    (:func:`issue_ring`), under the later waves' re-checks."""
    _mark_released(batch, ring + 1, now)
    payload = {"ring": ring, "size": batch.ring_sizes[ring], "via": via}
    history.append(actor, "batch.ring_released", batch, site_id=batch.site_id, payload=payload)
    enqueue_on_commit("rmm.engine.tasks.issue_ring", str(batch.pk), ring)
    _announce(batch)


def issue_ring(batch_id, ring: int, now: datetime | None = None) -> int:
    """Sign and store the instructions of a released ring's jobs that have none yet, in the
    requester's name, through :func:`rmm.engine.services.issuing.issue_later_waves` (its re-checks under
    the history's lock; nothing is stored unless the batch is still running). Returns how many."""
    batch = Batch.objects.select_related("requested_by").get(pk=batch_id)
    kind = registry.get(batch.job_kind)
    ids = list(issuing._not_issued(kind).filter(batch_id=batch.pk, ring=ring).values_list("pk", flat=True))
    actor = history.actor_of(batch.requested_by)
    now = now or timezone.now()
    count = 0
    for begin in range(0, len(ids), issuing.TASK_CHUNK):
        chunk = ids[begin : begin + issuing.TASK_CHUNK]
        count += issuing.issue_later_waves(kind.name, chunk, actor, 0, now, now=now, via="batch ring", batch=batch)
    return count


def _halt(batch: Batch, reason: str) -> None:
    """Stop releasing rings: running jobs finish; the history says why and the PSA is told."""
    if not Batch.objects.filter(pk=batch.pk, status=B.RUNNING).update(status=B.HALTED, halt_reason=reason):
        return
    batch.status, batch.halt_reason = B.HALTED, reason
    payload = {"reason": reason, **_counts(batch)}
    history.append("system", "batch.halted", batch, site_id=batch.site_id, payload=payload)
    outbox.emit(HALTED_EVENT, batch, site_id=batch.site_id, data={"batch": str(batch.pk), **payload})
    _announce(batch)


def _counts(batch: Batch) -> dict:
    return {"results": batch.results, "failed": batch.failed, "released_rings": batch.released_rings}


def _announce(batch: Batch) -> None:
    event = {"type": "batch", "id": str(batch.pk), "status": batch.status, "site": str(batch.site_id)}
    events.publish(batch.site_id, {**event, "released_rings": batch.released_rings, "rings": len(batch.ring_sizes)})


def sweep(now: datetime) -> int:
    """The backstop: rings whose interval ended after the last result of the ring before are
    released. (A ring's lost task is made up for by :func:`rmm.engine.services.issuing.issue_stranded`.)"""
    count = 0
    for batch_id in list(Batch.objects.filter(status=B.RUNNING, timed=False).values_list("pk", flat=True)[:1000]):
        with transaction.atomic():
            history.lock()  # first, as every result does before it locks the batch
            batch = Batch.objects.select_for_update().get(pk=batch_id)
            before = batch.released_rings
            advance(batch, now, via="sweep")
            count += batch.released_rings - before
    return count


# --- stopping and resuming -----------------------------------------------------------------------


def stop_in_scope(switch: KillSwitch, actor) -> int:
    """A kill switch engaged over a batch's site (or everything) stops the batch: it ends
    ``aborted`` and nothing more is released; its jobs with no instruction yet end aborted (a
    batch without a plan: by its later waves' task, which finds the switch). Its issued
    instructions are stopped by the switch's own scan. Returns how many batches."""
    if switch.scope == KillSwitchScope.ASSET:
        return 0  # the asset's own job is stopped by the switch; the batch goes on
    batches = Batch.objects.filter(status__in=[B.RUNNING, B.HALTED])
    if switch.scope == KillSwitchScope.SITE:
        batches = batches.filter(site_id=switch.site_id)
    reason = f"kill switch engaged on {switch.target_label}: {switch.reason}"
    stopped = 0
    for batch in list(batches):
        with transaction.atomic():
            history.lock()
            if not Batch.objects.filter(pk=batch.pk, status__in=[B.RUNNING, B.HALTED]).update(
                status=B.ABORTED, halt_reason=reason
            ):
                continue
            batch.status, batch.halt_reason = B.ABORTED, reason
            payload = {"reason": reason, "kill_switch": str(switch.pk)}
            history.append(actor, "batch.aborted", batch, site_id=batch.site_id, payload=payload)
            if not batch.timed:  # a batch without a plan: its later waves' task aborts them, as before
                kind = registry.get(batch.job_kind)
                ids = issuing._not_issued(kind).filter(batch_id=batch.pk).values_list("pk", flat=True)
                waited = f"kill switch engaged on {switch.target_label} while the job waited for its ring"
                issuing._abort_unissued(kind, dict.fromkeys(ids, waited), "system")
            _announce(batch)
            stopped += 1
    return stopped


def resume(batch: Batch, user) -> Batch:
    """An approver who did not request the batch lets a halted batch go on: the ring that was
    due is released (if its time has come) and the released jobs not yet issued are issued. (A
    kill switch over its site ended it ``aborted``, which does not resume.)"""
    if not access.can(user, "approve"):
        history.record_refusal(user, "batch.resume", batch, reason="role may not approve", site_id=batch.site_id)
        raise Forbidden("Resuming a batch needs the approver role.")
    if batch.requested_by_id == user.pk:
        history.record_refusal(user, "batch.resume", batch, reason="self-approval", site_id=batch.site_id)
        raise Forbidden("You may not resume a batch you requested.")
    if batch.status != B.HALTED:
        raise Conflict(f"The batch is {batch.status}; only a halted batch can be resumed.")
    with transaction.atomic():
        history.lock()
        if not Batch.objects.filter(pk=batch.pk, status=B.HALTED).update(status=B.RUNNING, halt_reason=""):
            raise Conflict("The batch is no longer halted.")
        batch = Batch.objects.select_for_update().get(pk=batch.pk)
        history.append(user, "batch.resumed", batch, site_id=batch.site_id, payload=_counts(batch))
        kind = registry.get(batch.job_kind)
        waiting = issuing._not_issued(kind).filter(batch_id=batch.pk, ring__lt=batch.released_rings)
        if batch.released_rings and waiting.exists():  # released before the halt, not issued since
            enqueue_on_commit("rmm.engine.tasks.issue_ring", str(batch.pk), batch.released_rings - 1)
        released = batch.released_rings
        advance(batch, timezone.now(), via="resume", actor=user)
        if batch.status == B.RUNNING and batch.released_rings == released:
            _announce(batch)  # running again; a ring released or the batch completed announced itself
    return batch


# --- reading ------------------------------------------------------------------------------------

PROGRESS = {
    S.AWAITING_APPROVAL: "pending",
    S.QUEUED: "pending",
    S.RUNNING: "running",
    S.SUCCEEDED: "succeeded",
    S.FAILED: "failed",
    S.TIMED_OUT: "failed",
    S.LOST: "failed",
    S.ABORTED: "aborted",
    S.REJECTED: "aborted",
}


def progress(batch: Batch) -> list[dict]:
    """Each ring's size and how many of its jobs are pending, running, succeeded, failed (failed,
    timed out, lost) and aborted (aborted, rejected): one query, whatever the batch's size."""
    rings = [
        {"index": n, "size": size, "pending": 0, "running": 0, "succeeded": 0, "failed": 0, "aborted": 0}
        for n, size in enumerate(batch.ring_sizes)
    ]
    model = registry.get(batch.job_kind).model
    for ring, status, count in (
        model.objects.filter(batch_id=batch.pk).values_list("ring", "status").annotate(n=Count("pk")).order_by()
    ):
        rings[ring][PROGRESS[status]] += count
    return rings


def totals(batch_list: Iterable[Batch]) -> dict[str, dict[str, int]]:
    """Each batch's jobs counted as pending, running, succeeded, failed and aborted (the same words
    as :func:`progress`), by batch id: one query per job kind among them, however many batches."""
    by_kind: dict[str, list] = {}
    counts: dict[str, dict[str, int]] = {}
    for batch in batch_list:
        by_kind.setdefault(batch.job_kind, []).append(batch.pk)
        counts[str(batch.pk)] = dict.fromkeys(("pending", "running", "succeeded", "failed", "aborted"), 0)
    for kind, ids in by_kind.items():
        rows = registry.get(kind).model.objects.filter(batch_id__in=ids).values_list("batch_id", "status")
        for batch_id, status, count in rows.annotate(n=Count("pk")).order_by():
            counts[str(batch_id)][PROGRESS[status]] += count
    return counts
