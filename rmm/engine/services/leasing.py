"""Leasing: the agent's hot path. A heartbeat's check-in, a held heartbeat's look for work, the
lease of released instructions under the kill switches, the throttles and their authority, the
envelope an agent gets, and the running work it must kill."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import OuterRef, Q, Subquery, UUIDField

from rmm.authority.models import AuthorityStatus, PsaCase, PsaTask, authority_gone
from rmm.engine import registry
from rmm.engine.models import Instruction, KillSwitch
from rmm.engine.services import issuing, throttles, transitions
from rmm.engine.services.results import uuid_or_none
from rmm.engine.services.stopping import end_instruction, request_aborts
from rmm.engine.states import FINAL, JobStatus
from rmm.history import services as history
from rmm.inventory import services as inventory
from rmm.inventory.models import Agent
from rmm.keys import keyset
from rmm_agent.protocol import ARTEFACTS_SINCE

S = JobStatus
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckIn:
    """What every heartbeat needs to know besides the agent itself."""

    facts_hash: str | None  # the stored hash of the asset's facts
    namespace_hashes: dict  # the stored hash of each of its fact namespaces
    switch: KillSwitch | None  # the engaged kill switch covering the asset
    work_waiting: bool  # queued, released, unexpired instructions for this agent
    keys_version: int  # the signing-key registry's version (rmm.keys.keyset.VERSION_SQL)


def check_in(
    agent: Agent,
    now: datetime,
    version: str,
    key_id: str | None = None,
    protocol: int = 1,
    capabilities: str | None = None,
) -> CheckIn:
    """Record that the agent was seen (its version, the protocol it speaks and, with ``key_id``,
    the newest signing key it holds; with ``capabilities``, what it can do, when that changed)
    and learn what its heartbeat needs: one statement.

    Every agent calls this forever, so its SQL is written once here rather than built through
    the ORM on every call, which cost most of a heartbeat's CPU (docs/performance.md).
    """
    agent_id, asset_id, site_id = (_uuid_param(pk) for pk in (agent.pk, agent.asset_id, agent.asset.site_id))
    moment = connection.ops.adapt_datetimefield_value(now)
    with connection.cursor() as cursor:
        params = [moment, version, protocol, key_id, capabilities, agent_id]
        params += [asset_id, asset_id, site_id, asset_id, agent_id, S.QUEUED, moment, moment]
        cursor.execute(_CHECK_IN_SQL, params)
        facts_hash, hashes, switch_id, waiting, keys_version = cursor.fetchone()
    agent.protocol = protocol  # what this heartbeat's lease, and a held one's, go by
    if isinstance(hashes, str | bytes):  # the JSON column's text (SQLite; PostgreSQL through Django)
        hashes = json.loads(hashes)
    namespace_hashes = hashes if isinstance(hashes, dict) else {}
    return CheckIn(facts_hash, namespace_hashes, _engaged_switch(switch_id), bool(waiting), int(keys_version))


def came_back(agent: Agent, after: str, now: datetime) -> int:
    """The agent's endpoint came back from the reboot after instruction ``after`` (its heartbeat
    says so, once): the steps held for it are released now, for this heartbeat to lease. Returns
    how many. Nothing when it was not rebooting (a repeat; or its grace ran out, and the sweep
    ended the held steps lost)."""
    with transaction.atomic():
        history.lock()  # the sweep ends held steps under it: one or the other
        if not inventory.came_back(agent, after):
            return 0
        return Instruction.objects.filter(issuing.HELD, agent=agent).update(release_at=now)


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
_FACTS_SQL = (
    "(SELECT facts_hash FROM inventory_assetfacts WHERE asset_id = %s),"
    " (SELECT namespace_hashes FROM inventory_assetfacts WHERE asset_id = %s)"
)
# The statements below are built from the constants above only; every value is a parameter.
# The check-in is one round trip: the agent is seen, and learns what its heartbeat needs
# (RETURNING: PostgreSQL, and SQLite 3.35+).
_CHECK_IN_SQL = (
    "UPDATE inventory_agent SET last_seen_at = %s, version = %s, protocol = %s,"  # noqa: S608
    " signing_key_id = COALESCE(%s, signing_key_id), capabilities = COALESCE(%s, capabilities) WHERE id = %s"
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
        rows = _abort_unfetchable(rows, agent)
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


def _abort_unfetchable(rows: list[Instruction], agent: Agent) -> list[Instruction]:
    """Of the instructions about to be leased, those that name artefacts end aborted when the
    agent speaks a protocol older than artefacts: it would ignore the field and run the step
    without its files. The others are returned."""
    if agent.protocol >= ARTEFACTS_SINCE:
        return rows
    kept = []
    reason = (
        f"the step names artefacts, which the agent (protocol {agent.protocol}) cannot fetch; "
        f"update the agent to protocol {ARTEFACTS_SINCE} or later"
    )
    for inst in rows:
        if not inst.artefacts:
            kept.append(inst)
            continue
        try:
            end_instruction(inst, S.QUEUED, S.ABORTED, "system", reason)
        except Exception:  # never leased all the same; the next lease tries again
            logger.exception("lease: instruction %s with artefacts could not be aborted", inst.pk)
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
    ids = [pk for pk in (uuid_or_none(i) for i in running_ids[:100]) if pk]
    wanted = Q(status__in=FINAL) | Q(status=S.RUNNING, abort_reason__gt="")
    if switch is not None:
        wanted |= Q(status=S.RUNNING)
    found = list(
        Instruction.objects.filter(wanted, agent=agent, pk__in=ids).values_list("pk", "status", "abort_reason")
    )
    unmarked = [pk for pk, status, reason in found if status == S.RUNNING and not reason]
    if unmarked and switch is not None:
        reason = f"kill switch engaged on {switch.target_label}: {switch.reason}"
        request_aborts(unmarked, agent, reason, {"kill_switch": str(switch.pk), "via": "heartbeat"})
    return [str(pk) for pk, _, _ in found]
