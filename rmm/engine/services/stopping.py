"""Stopping: work that ends without its agent's report. An instruction ended lost or aborted,
work stopped (queued ends now, running is killed at its agent's next heartbeat) for a kill
switch, a revoked agent or withdrawn or expired authority, and the minute's sweep."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from rmm.authority.models import PsaCase, PsaTask
from rmm.engine import events, registry
from rmm.engine.models import Instruction
from rmm.engine.services import batches, issuing
from rmm.engine.services.results import finish_job
from rmm.engine.services.transitions import transition_instruction
from rmm.engine.states import JobStatus
from rmm.history import services as history
from rmm.inventory import services as inventory
from rmm.inventory.models import Agent

S = JobStatus
logger = logging.getLogger(__name__)


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
        finish_job(inst, actor, {"outcome": to, "reason": reason})
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
    running = request_aborts(
        instructions.filter(status=S.RUNNING, abort_reason="").values_list("pk", flat=True), actor, reason
    )
    if running:
        events.wake_agents(agent_id for _, agent_id in running)  # killed now, not at the next heartbeat
    if failed is not None:
        raise failed  # the caller learns, once every other instruction is stopped
    return count + len(running)


def request_aborts(pks, actor, reason: str, payload: dict | None = None) -> list[tuple]:
    """Mark running instructions for their agents to kill, each once: the ones still running and
    unmarked are read under their row locks, so a second stopper racing this one waits and then
    finds them marked. Returns (pk, agent_id) of those marked here."""
    with transaction.atomic():
        rows = list(
            Instruction.objects.select_for_update()
            .filter(pk__in=list(pks), status=S.RUNNING, abort_reason="")
            .order_by("pk")  # the order results lock them in: two lockers never wait on each other
            .values_list("pk", "site_id", "agent_id")
        )
        if rows:
            Instruction.objects.filter(pk__in=[pk for pk, _, _ in rows]).update(abort_reason=reason[:2000])
            history.append_many(
                history.Event(
                    history.actor_of(actor),
                    "instruction.abort_requested",
                    "engine.instruction",
                    str(pk),
                    site_id,
                    {"reason": reason, **(payload or {})},
                )
                for pk, site_id, _ in rows
            )
    return [(pk, agent_id) for pk, _, agent_id in rows]


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


# Work that acts on endpoints outside an instruction (a live remote session carried by its provider)
# registers here, in its AppConfig.ready: ``live(key)`` is a ``values()`` query of the case or task
# ids (key "psa_case_id" or "psa_task_id") under which it still runs, for the expiry sweep;
# ``stop(key, value, actor, reason)`` ends that work under the withdrawn authority and says how many.
_WITHDRAWAL_HOOKS: list[tuple[Callable[[str], Any], Callable[[str, Any, Any, str], int]]] = []


def register_withdrawal_hook(live: Callable[[str], Any], stop: Callable[[str, Any, Any, str], int]) -> None:
    if (live, stop) not in _WITHDRAWAL_HOOKS:
        _WITHDRAWAL_HOOKS.append((live, stop))


def _run_withdrawal_hooks(key: str, value, actor, reason: str) -> int:
    """Every registered app stops its work too; one that fails is logged and recorded, and the
    others still run (the withdrawal itself stands)."""
    count = 0
    for _, stop in _WITHDRAWAL_HOOKS:
        name = f"{stop.__module__}.{stop.__qualname__}"
        try:
            with transaction.atomic():
                count += stop(key, value, actor, reason)
        except Exception as exc:  # noqa: BLE001 - any failure of one app's hook must not spare the others
            logger.exception("withdrawal hook %s failed", name)
            history.append(
                "system",
                "authority.withdrawal_hook_failed",
                payload={"hook": name, key: str(value), "error": f"{type(exc).__name__}: {exc}"[:500]},
            )
    return count


def withdraw_authority(actor, reason: str, *, case_id=None, task_id=None) -> int:
    """Upstream authority was withdrawn or expired: the work it covered stops (Law 1 holds after creation too).

    Jobs of a batch's later waves with no instruction yet end aborted first, under the history's
    lock, so that no later wave is issued on authority granted again before this ran; then the
    instructions issued so far (including any issued just before) are stopped; then the work of
    the registered withdrawal hooks (live remote sessions, which may have no instruction).
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
            ids = issuing._not_issued(kind).filter(**{lookup: value}).values_list("pk", flat=True)
            aborted += issuing._abort_unissued(kind, dict.fromkeys(ids, reason), actor)
    active = Instruction.objects.filter(status__in=[S.QUEUED, S.RUNNING], **{key: value})
    stopped = stop_instructions(active, actor, reason)
    return aborted + stopped + _run_withdrawal_hooks(key, value, actor, reason)


def withdraw_expired_authority(now: datetime | None = None) -> int:
    """Stop work whose PSA case or task expired since it was queued: its instructions, the jobs of
    later waves that have none yet, and the work of the withdrawal hooks (live remote sessions)."""
    now = now or timezone.now()
    count = 0
    for model, key, name in ((PsaCase, "psa_case_id", "case"), (PsaTask, "psa_task_id", "task")):
        covered = Q(pk__in=Instruction.objects.filter(status__in=[S.QUEUED, S.RUNNING], abort_reason="").values(key))
        for kind in registry.all_kinds():
            if key in kind.authority_lookups:
                covered |= Q(pk__in=issuing._not_issued(kind).values(kind.authority_lookups[key]))
        for live, _ in _WITHDRAWAL_HOOKS:
            covered |= Q(pk__in=live(key))
        for pk in list(model.objects.filter(covered, expires_at__lt=now).values_list("pk", flat=True)):
            try:
                count += withdraw_authority("system", f"PSA {name} expired", **{f"{name}_id": pk})
            except Exception:  # each case or task alone: the next sweep tries it again
                logger.exception("sweep: stopping the work of expired PSA %s %s failed", name, pk)
    return count


def end_lost_reboots(now: datetime) -> int:
    """Endpoints that did not come back from a step's reboot within ``RMM_REBOOT_GRACE_SECONDS``:
    the steps held for them end lost, their jobs with them (with evidence, as any lost step),
    and their agents are rebooting no more."""
    overdue = Instruction.objects.filter(issuing.HELD, agent__rebooting_until__lt=now)
    if not overdue.exists():
        return 0  # the usual minute: no lock taken
    reason = f"the endpoint did not come back from its reboot within {settings.RMM_REBOOT_GRACE_SECONDS} s"
    count = 0
    with transaction.atomic():
        history.lock()  # an agent coming back releases its held steps under it: one or the other
        for inst in list(overdue.order_by("issued_at")[:1000]):
            count += end_instruction(inst, S.QUEUED, S.LOST, "system", reason)
        inventory.end_reboots(now)
    return count


def sweep(now: datetime | None = None) -> int:
    """Instructions whose lease ran out, or that no agent leased in time, become lost (never
    re-run), and so do steps held for a reboot that did not come back; work under expired
    authority stops; lost later waves are issued; agents not seen
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
    steps = (end_lost_reboots, withdraw_expired_authority, issuing.issue_stranded, batches.sweep)
    steps += (inventory.mark_presence,)
    for step in (*steps, inventory.close_refusal_windows):
        try:
            count += step(now)
        except Exception:
            logger.exception("sweep: %s failed; the other steps went on", step.__name__)
    return count
