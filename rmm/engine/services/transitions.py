"""The one transition path: every status change of a job or an instruction, one or many at once.

Each function here moves rows only from the statuses the table in :mod:`rmm.engine.states`
allows (a conditional UPDATE, so a racing writer loses instead of overwriting), and appends the
change's history event. Nothing else writes a job's or an instruction's status: a test scans the
code for any other writer (tests/engine/test_transitions.py). :func:`jobs_ended` is the one place
every job that reaches a final status passes through, single or bulk.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.utils import timezone

from rmm.core.errors import Conflict
from rmm.engine import events, registry
from rmm.engine.models import Instruction
from rmm.engine.services import batches, cases
from rmm.engine.states import FINAL, TRANSITIONS, JobStatus, sources_of
from rmm.history import services as history
from rmm.outbox import services as outbox

S = JobStatus


def _sources(to: str, only_from: Iterable[str] | None) -> frozenset[str]:
    """The statuses a row may leave for ``to``: the table's, narrowed to ``only_from`` if given.
    Asking for a move the table does not allow is a programming error."""
    allowed = sources_of(to)
    if only_from is None:
        return allowed
    wanted = frozenset(only_from)
    if not wanted <= allowed:
        raise ValueError(f"the transition table allows no move from {sorted(wanted - allowed)} to {to}")
    return wanted


# --- jobs ----------------------------------------------------------------------------------


def transition_job(job, to: str, actor, *, reason: str = "", **fields) -> None:
    """Move a job to ``to`` with a conditional update: a stale or racing caller gets 409."""
    now = timezone.now()
    if to == S.RUNNING and hasattr(job, "started_at"):
        fields.setdefault("started_at", now)
    if to in FINAL and hasattr(job, "completed_at"):
        fields.setdefault("completed_at", now)
    if reason:
        fields["status_reason"] = reason
    model = type(job)
    updated = model.objects.filter(pk=job.pk, status__in=sources_of(to)).update(status=to, **fields)
    if not updated:
        current = model.objects.filter(pk=job.pk).values_list("status", flat=True).first()
        raise Conflict(f"The job is {current}; it cannot become {to}.")
    before = job.status
    job.status = to
    for name, value in fields.items():
        setattr(job, name, value)
    kind = registry.kind_of(job)
    history.append(
        actor,
        f"job.{to}",
        job,
        site_id=job.site_id,
        payload={"kind": kind.name, "from": before, "to": to, "reason": reason},
    )
    if to in FINAL:
        jobs_ended(kind, [(job.pk, job.site_id)], finished=[job])
    events.publish(job.site_id, job_event(job))


def end_jobs(kind, ends: list[tuple]) -> None:
    """Jobs of ``kind``, locked by the caller, each reach its final status with its reason, in its
    actor's name (``ends``: (job, status, reason, actor)): one UPDATE per (status, reason) and one append, however
    many. A job no longer in a status it may leave so is a programming error: the caller checked
    each under its lock (:func:`rmm.engine.services.results.ingest_results`)."""
    if not ends:
        return
    now = timezone.now()
    stamps = {"completed_at": now} if hasattr(kind.model, "completed_at") else {}
    groups: dict[tuple[str, str], list] = {}
    for job, to, reason, actor in ends:
        if to not in FINAL:
            raise ValueError(f"{to} is not a final status")
        groups.setdefault((to, reason), []).append((job, actor))
    appended = []
    for (to, reason), jobs in groups.items():
        fields = {"status": to, "status_reason": reason, **stamps}
        updated = kind.model.objects.filter(pk__in=[job.pk for job, _ in jobs], status__in=sources_of(to)).update(
            **fields
        )
        if updated != len(jobs):
            raise Conflict(f"{len(jobs) - updated} of {len(jobs)} jobs can no longer become {to}.")
        for job, actor in jobs:
            before = job.status
            for name, value in fields.items():
                setattr(job, name, value)
            appended.append(_job_changed(actor, kind, job.pk, job.site_id, before, to, reason))
    history.append_many(appended)
    jobs = [job for job, _, _, _ in ends]
    jobs_ended(kind, [(job.pk, job.site_id) for job in jobs], finished=jobs)
    events.publish_many((job.site_id, job_event(job)) for job in jobs)


def start_jobs(kind, job_ids: Iterable, actor, now: datetime) -> list[history.Event]:
    """Queued jobs whose first instruction was just leased become running: one read and one
    UPDATE per kind, whatever their number. Returns their ``job.running`` history events, for
    the caller to append with its own in one go (the lease appends once)."""
    fields = {"status": S.RUNNING}
    if any(f.name == "started_at" for f in kind.model._meta.get_fields()):
        fields["started_at"] = now
    # The kind's relations come in the same query: describe() must not cost queries per job.
    jobs = list(
        kind.model.objects.select_for_update(of=("self",))
        .filter(pk__in=set(job_ids), status__in=_sources(S.RUNNING, [S.QUEUED]))
        .select_related(*kind.select_related)
    )
    if not jobs:
        return []
    kind.model.objects.filter(pk__in=[job.pk for job in jobs], status=S.QUEUED).update(**fields)
    started = []
    for job in jobs:
        before = job.status
        for name, value in fields.items():
            setattr(job, name, value)
        events.publish(job.site_id, job_event(job))
        started.append(_job_changed(actor, kind, job.pk, job.site_id, before, S.RUNNING, ""))
    return started


def abort_queued_jobs(kind, reasons: dict, actor, only_unissued) -> int:
    """Queued jobs end aborted, each with its reason (job id -> reason): one update per reason and
    one history append. ``only_unissued`` is the kind's queryset of jobs that may be ended so
    (those without an instruction: they have no evidence to write)."""
    if not reasons:
        return 0
    by_reason: dict[str, list] = {}
    for pk, reason in reasons.items():
        by_reason.setdefault(reason, []).append(pk)
    now = timezone.now()
    stamps = {"completed_at": now} if hasattr(kind.model, "completed_at") else {}
    sources = _sources(S.ABORTED, [S.QUEUED])
    ended = []
    for reason, ids in by_reason.items():
        found = list(only_unissued.filter(pk__in=ids, status__in=sources).values_list("pk", "site_id"))
        kind.model.objects.filter(pk__in=[pk for pk, _ in found], status__in=sources).update(
            status=S.ABORTED, status_reason=reason, **stamps
        )
        ended += [(pk, site_id, reason) for pk, site_id in found]
    history.append_many(
        _job_changed(actor, kind, pk, site_id, S.QUEUED, S.ABORTED, reason) for pk, site_id, reason in ended
    )
    for site_id, count in Counter(site_id for _, site_id, _ in ended).items():  # one event per site
        events.publish(
            site_id,
            {"type": "job_batch", "kind": kind.name, "count": count, "status": S.ABORTED, "site": str(site_id)},
        )
    jobs_ended(kind, [(pk, site_id) for pk, site_id, _ in ended])
    return len(ended)


def _job_changed(actor, kind, pk, site_id, before: str, to: str, reason: str) -> history.Event:
    """A job's ``job.<to>`` event, as :func:`transition_job` appends it, for a bulk path to append."""
    payload = {"kind": kind.name, "from": before, "to": to, "reason": reason}
    return history.Event(history.actor_of(actor), f"job.{to}", kind.model._meta.label_lower, str(pk), site_id, payload)


def jobs_ended(kind, ended: list[tuple], *, finished: list | None = None) -> None:
    """Jobs of ``kind`` (id, site id) just reached a final status, their history appended: the one
    place every job's end passes through, whatever ended it. The PSA hears ``job.finished`` for
    each, and ``case.may_close`` for a case whose last job this was; their batches count their
    results (``finished``: the jobs, loaded, that ended so) or move on (jobs aborted unissued)."""
    label = kind.model._meta.label_lower
    outbox.emit_many(
        outbox.Emitted("job.finished", label, str(pk), site_id, {"kind": kind.name}) for pk, site_id in ended
    )
    ids = [pk for pk, _ in ended]
    # Both read under the history's lock: at the end of a result's transaction, after its evidence
    # (history.deferred), so that the lock is held no longer than its append.
    history.at_end(lambda: cases.after_jobs_ended(kind, ids))
    history.at_end(lambda: batches.jobs_finished(finished) if finished is not None else batches.jobs_ended(kind, ids))


def job_event(job) -> dict:
    kind = registry.kind_of(job)
    event = {
        "type": "job",
        "kind": kind.name,
        "id": str(job.pk),
        "status": job.status,
        "description": kind.describe(job),
        "site": str(job.site_id),
    }
    for name in ("created_at", "started_at", "completed_at"):
        value = getattr(job, name, None)
        event[name] = value.isoformat() if value else None
    return event


# --- instructions --------------------------------------------------------------------------


def transition_instruction(
    inst: Instruction,
    to: str,
    actor,
    *,
    payload: dict,
    action: str = "",
    only_from: Iterable[str] | None = None,
    unless_reported: bool = False,
    **fields,
) -> bool:
    """Move one instruction to ``to`` (from ``only_from``, within what the table allows) and
    append its history event (``action``, by default ``instruction.<to>``). False when it was no
    longer in a status it may leave so (ended meanwhile). ``unless_reported``: only if no result
    was recorded on it."""
    match = {"result_hash": ""} if unless_reported else {}
    if not Instruction.objects.filter(pk=inst.pk, status__in=_sources(to, only_from), **match).update(
        status=to, **fields
    ):
        return False
    inst.status = to
    for name, value in fields.items():
        setattr(inst, name, value)
    history.append(actor, action or f"instruction.{to}", inst, site_id=inst.site_id, payload=payload)
    return True


def report_instructions(rows: list[Instruction], fields: list[str]) -> None:
    """Running instructions, locked by the caller, take their agents' results (each row's status
    and ``fields`` already set on it): one UPDATE. The caller appends their events."""
    for inst in rows:
        if inst.status not in TRANSITIONS[S.RUNNING]:
            raise ValueError(f"a running instruction cannot become {inst.status}")
    Instruction.objects.filter(status=S.RUNNING, result_hash="").bulk_update(rows, ["status", *fields])


def lease_instructions(rows: list[Instruction], agent, now: datetime, grace: timedelta) -> list[history.Event]:
    """Queued instructions, locked by the caller, become running with their lease: one UPDATE.
    Returns their ``instruction.leased`` events, for the caller to append with its own."""
    for inst in rows:
        if S.RUNNING not in TRANSITIONS[inst.status]:
            raise ValueError(f"instruction {inst.pk} is {inst.status}; it cannot be leased")
        inst.status = S.RUNNING
        inst.leased_at = now
        inst.lease_expires_at = now + timedelta(seconds=inst.timeout_seconds) + grace
    Instruction.objects.filter(status__in=_sources(S.RUNNING, [S.QUEUED])).bulk_update(
        rows, ["status", "leased_at", "lease_expires_at"]
    )
    return [
        history.Event(
            history.actor_of(agent),
            "instruction.leased",
            "engine.instruction",
            str(inst.pk),
            inst.site_id,
            {"lease_expires_at": inst.lease_expires_at.isoformat()},
        )
        for inst in rows
    ]
