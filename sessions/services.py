"""Remote sessions (docs/sessions.md): the only place that opens, decides, starts and ends them.

A session is a job of the kind ``remote_session`` created by the engine, which applies Law 1
(the PSA task covers the asset), the caller's sites, kill switches, self-authorization and the
history to it as to every kind. This adds the session's own rules: the ``open_sessions`` role,
the site's session policy (allowed at all, an approver, how long), an agent that is online and
can carry the provider, and an approver who is not the requester for every privileged session.
Every refusal is in the history; every end appends ``session.ended`` and tells the outbox. An
admin proposes each site's policy as a new version, decided by the one artefact approval service."""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from evidence import services as evidence
from evidence.models import RmmEvidence
from rmm.access import roles as access
from rmm.artefacts import services as artefacts
from rmm.authority import laws
from rmm.authority.models import PsaTask
from rmm.core.errors import Conflict, Forbidden, InvalidInput, NotFound, ServiceError
from rmm.core.on_commit import enqueue_on_commit
from rmm.engine import registry
from rmm.engine import services as engine
from rmm.engine.services import kill_switches
from rmm.engine.states import FINAL, JobStatus
from rmm.history import services as history
from rmm.history.models import HistoryEvent
from rmm.inventory.models import Agent, Asset
from rmm.outbox import services as outbox
from sessions import kind, policies, providers, recording
from sessions.models import (
    EndReason,
    JoinMode,
    JoinToken,
    RecordingChunk,
    RemoteSession,
    SessionPolicy,
    SessionType,
)

ENDED = "session.ended"  # the outbox event of every ended session (the PSA hears it)
RECORDED = "session.recorded"  # its recording sealed as evidence, with the sha256
ACTION = "remote_session.open"
SYSTEM = "system:sessions"
SEAL_TASK = "sessions.tasks.seal_recording"
SEAL_WAIT = timedelta(seconds=60)  # how long sealing waits for a live relay's last chunk
JOIN_TOKEN_LIFETIME = timedelta(seconds=60)  # a join token is used at once, by the page that minted it
SEAL_RETRY = timedelta(days=1)  # how long the minute's sweep tries again to seal a recording
UNSEALED_LOOKBACK = timedelta(days=7)  # how long after SEAL_RETRY a session never sealed is still reported
UNSEALED = "session.recording_unsealed"

log = logging.getLogger(__name__)


def open_session(
    user, *, asset_id, session_type: str, provider: str, psa_task_id, privileged: bool = False
) -> tuple[RemoteSession, str]:
    """Open a session on one asset on a PSA task's authority: the session and its join URL.

    It waits for an approver (not its requester) when it is privileged or the site's policy asks
    for one; otherwise its provider starts at once (the terminal's agent is sent its step)."""
    engine.require_role(user, "open_sessions", ACTION)
    if session_type not in SessionType.values:
        raise InvalidInput(f"Must be one of: {', '.join(SessionType.values)}.", field="session_type")
    try:
        carrier = providers.get(provider)
    except LookupError:
        raise InvalidInput(f"Must be one of: {', '.join(providers.names())}.", field="provider") from None
    if session_type not in carrier.session_types:
        raise InvalidInput(f"The {provider} provider carries no {session_type} session.", field="session_type")
    asset = _asset(user, asset_id)
    policy = policies.policy_for(asset.site)
    if not policy.allowed:
        _refuse(user, asset, Forbidden("This site's policy allows no remote sessions."))
    _refuse_if_unreachable(user, asset, carrier)
    requires_approval = bool(privileged) or policy.approval_required
    _refuse_if_cannot_wait(user, asset, carrier, requires_approval, psa_task_id)
    session = engine.create_job(
        user,
        "remote_session",
        asset_id=asset.pk,
        psa_task_id=psa_task_id,
        initiated_by=user,
        provider=carrier.name,
        session_type=session_type,
        privileged=bool(privileged),
        requires_approval=requires_approval,
    )
    try:
        return session, carrier.start(session)
    except ServiceError:
        end_by_system(session, EndReason.PROVIDER)  # it exists: it ends, recorded and told
        raise
    except Exception as exc:  # a provider's fault it did not foresee: the same end, and a 409, never a 500
        log.exception("the %s provider failed to start session %s", carrier.name, session.pk)
        end_by_system(session, EndReason.PROVIDER)
        raise Conflict(f"The {carrier.name} provider could not start the session: {exc}.", field="provider") from exc


def admit_provider(user, asset: Asset, provider: str) -> dict:
    """The provider's checks before the session exists, once the engine's laws passed (its
    kind's ``admit``): what it keeps on the session, or its refusal (409, 403), recorded."""
    try:
        return providers.get(provider).prepare(user, asset)
    except (Conflict, Forbidden) as error:
        _refuse(user, asset, error)


def _asset(user, asset_id) -> Asset:
    """The asset, of a site the caller may see; any other is not found (404, recorded)."""
    try:
        pk = uuid.UUID(str(asset_id))
    except ValueError:
        raise InvalidInput("Must be an asset's id.", field="asset") from None
    asset = Asset.objects.select_related("site").filter(pk=pk, site__in=access.visible_sites(user)).first()
    if asset is None:
        history.record_refusal(user, ACTION, reason="no such asset in the caller's sites", payload={"asset": str(pk)})
        raise NotFound("No such asset.", field="asset")
    return asset


def _refuse_if_unreachable(user, asset: Asset, carrier) -> None:
    """A provider carried by the asset's agent needs it online now (409), and able to carry the
    provider (a retired asset is refused by the engine, as for every kind). One that reaches the
    endpoint by its own means checks in its ``prepare``."""
    if not carrier.capability:
        return
    agent = Agent.objects.filter(asset=asset, revoked_at__isnull=True).first()
    if agent is None or not agent.is_online():
        _refuse(user, asset, Conflict("The asset's agent is offline.", field="asset"))
    if not agent.can(carrier.capability):
        _refuse(user, asset, Conflict(f"The asset's agent cannot carry a {carrier.name} session.", field="asset"))


def _refuse_if_cannot_wait(user, asset: Asset, carrier, requires_approval: bool, psa_task_id) -> None:
    """A provider that hands its join URL out once, as it starts, cannot start later at an
    approver's word: a session of it that would wait (privileged, the site's policy, or a
    requester who wrote the authority it cites) is refused before it exists."""
    if carrier.can_wait_for_approval:
        return
    try:
        task = PsaTask.objects.select_related("case").filter(pk=uuid.UUID(str(psa_task_id))).first()
    except ValueError:
        task = None  # the engine refuses it
    if requires_approval or (task is not None and laws.self_authorized(task, user, asset.site)):
        _refuse(
            user,
            asset,
            Conflict(f"A {carrier.name} session starts as it opens: it cannot wait for an approver.", field="provider"),
        )


def provider_started(session: RemoteSession, provider_token: str) -> None:
    """A provider that reaches the endpoint by its own means started the session: it is live from
    now (its job runs; ``session.started``), and keeps what ends it (its remote token)."""
    with transaction.atomic():
        RemoteSession.objects.filter(pk=session.pk).update(provider_token=provider_token)
        session.provider_token = provider_token
        engine.transition_job(session, JobStatus.RUNNING, session.initiated_by)
        history.append(
            session.initiated_by,
            "session.started",
            session,
            site_id=session.site_id,
            payload={"asset": str(session.asset_id), "privileged": session.privileged, "provider": session.provider},
        )


def provider_failed(session: RemoteSession, during: str, error: Exception) -> None:
    """A provider could not do its part (revoke a token, hand the recording back): loud, in the
    history, never silent."""
    history.append(
        SYSTEM,
        "session.provider_failed",
        session,
        site_id=session.site_id,
        payload={"provider": session.provider, "during": during, "error": str(error)[:500]},
    )


def _refuse(user, asset: Asset, error: Exception, action: str = ACTION, subject=None) -> None:
    history.record_refusal(
        user,
        action,
        subject,
        reason=error.detail.rstrip("."),
        site_id=asset.site_id,
        payload={"asset": str(asset.pk)},
    )
    raise error


def approve(user, session: RemoteSession) -> None:
    """A second person lets a session that awaits approval start (the engine's four eyes)."""
    engine.approve_job(session, user)


def reject(user, session: RemoteSession, reason: str) -> None:
    """A second person refuses a session that awaits approval: it ends before it started."""
    engine.reject_job(session, user, reason)
    _close(session, EndReason.REJECTED, user, stop=False)


def end_session(user, session: RemoteSession) -> RemoteSession:
    """The technician who opened the session, or an admin, ends it (an admin's end says so)."""
    action = "remote_session.end"
    if session.initiated_by_id == user.pk and access.can(user, "open_sessions"):
        reason = EndReason.USER
    elif access.can(user, "manage_access"):
        reason = EndReason.ADMIN
    else:
        history.record_refusal(
            user, action, session, reason="only its technician or an admin may end a session", site_id=session.site_id
        )
        raise Forbidden("Only the technician who opened the session, or an admin, may end it.")
    if session.ended_at is not None:
        history.record_refusal(user, action, session, reason="the session has ended", site_id=session.site_id)
        raise Conflict("The session has ended.")
    _close(session, reason, user)
    return session


def end_by_system(session: RemoteSession, reason: str, actor: str = SYSTEM) -> bool:
    """The kill switch, the session's maximum duration or idle timeout, a recording that cannot be
    written or the agent's side closing ends it. False when it had already ended."""
    return _close(session, reason, actor)


def _close(session: RemoteSession, reason: str, actor, *, stop: bool = True) -> bool:
    """End the session once (a conditional update: two enders cannot both end it), stop the
    engine's work for it, append ``session.ended``, tell the outbox, then hang its provider up."""
    now = timezone.now()
    user = actor if not isinstance(actor, str) else None
    with transaction.atomic():
        ended = RemoteSession.objects.filter(pk=session.pk, ended_at__isnull=True).update(
            ended_at=now, end_reason=reason, ended_by=user
        )
        if not ended:
            return False
        session.ended_at, session.end_reason, session.ended_by = now, reason, user
        started = session.started_at
        facts = {
            "reason": reason,
            "asset": str(session.asset_id),
            "provider": session.provider,
            "psa_task_id": str(session.psa_task_id),
            "psa_case_id": str(session.psa_task.case_id),
            "started_at": started.isoformat() if started else None,
            "duration_seconds": duration_seconds(session),
        }
        history.append(actor, ENDED, session, site_id=session.site_id, payload=facts)
        outbox.emit(ENDED, session, site_id=session.site_id, data=facts)
        if stop:
            _stop_job(session, actor, f"session ended: {reason}")
        # robust: one provider's failure must not drop the other callbacks of the commit (the seal)
        transaction.on_commit(lambda: _hang_up(session.pk, session.provider, reason), robust=True)
        enqueue_on_commit(SEAL_TASK, str(session.pk))
    return True


def _hang_up(session_id, provider: str, reason: str) -> None:
    """The provider hangs the ended session up, with the session as committed now: a token its
    ``start`` kept meanwhile (after this end's caller read the session) is revoked too."""
    providers.get(provider).end(RemoteSession.objects.get(pk=session_id), reason)


def duration_seconds(session: RemoteSession, now: datetime | None = None) -> float | None:
    """From its start to its end (or to now while live); None before it started."""
    if session.started_at is None:
        return None
    return round(((session.ended_at or now or timezone.now()) - session.started_at).total_seconds(), 3)


def _stop_job(session: RemoteSession, actor, reason: str) -> None:
    """The session's job ends with it: waiting, it is aborted; its step queued, aborted; running,
    its agent is told to stop at once (the relay's close usually ends it first)."""
    current = RemoteSession.objects.get(pk=session.pk)
    if current.status in FINAL:
        return
    if current.status == JobStatus.AWAITING_APPROVAL:
        engine.transition_job(current, JobStatus.ABORTED, actor, reason=reason)
        return
    instructions = engine.job_instructions(current)
    if instructions.exists():
        engine.stop_instructions(instructions, actor, reason)
    else:  # without a step: queued when its agent had none active, or carried by its provider alone
        engine.transition_job(current, JobStatus.ABORTED, actor, reason=reason)


def end_in_scope(switch, actor) -> int:
    """The kill switch's hook (registered in apps.py): every session in its scope that has not
    ended ends now, live ones hung up at once."""
    ended = 0
    waiting = RemoteSession.objects.filter(ended_at__isnull=True).select_related("psa_task")
    for session in kill_switches.in_scope(switch, waiting):
        ended += end_by_system(session, EndReason.KILL_SWITCH, history.actor_of(actor))
    return ended


def _under(key: str):
    """Sessions not yet ended, with the lookup of their PSA case or task (``key``) as the engine names it."""
    lookup = registry.get("remote_session").authority_lookups[key]
    return RemoteSession.objects.filter(ended_at__isnull=True), lookup


def live_under(key: str):
    """The withdrawal hook's query (registered in apps.py): the ids of the cases or tasks under which
    a session has not ended, for the engine's expiry sweep."""
    sessions, lookup = _under(key)
    return sessions.values(lookup)


def end_under(key: str, value, actor, reason: str) -> int:
    """The withdrawal hook (registered in apps.py): every session under the withdrawn or expired case
    or task that has not ended ends now (``authority``), live ones hung up, whatever their provider."""
    sessions, lookup = _under(key)
    ended = 0
    for session in sessions.filter(**{lookup: value}).select_related("psa_task"):
        ended += end_by_system(session, EndReason.AUTHORITY, history.actor_of(actor))
    return ended


def overdue_reason(session: RemoteSession, policy: SessionPolicy, now: datetime) -> str | None:
    """The one rule the minute's sweep and the relay's timer share: ``max_duration`` counted from
    the session's start, ``idle`` from its last recorded byte (or its start); None while it may go on."""
    if session.started_at is None:
        return None
    if now - session.started_at >= timedelta(seconds=policy.max_duration_seconds):
        return EndReason.MAX_DURATION
    if not providers.sees_activity(session.provider):
        return None  # a remote-access server's session: its own idle rules apply, not ours
    last = session.last_activity_at or session.relay_opened_at or session.started_at
    if now - last >= timedelta(seconds=policy.idle_timeout_seconds):
        return EndReason.IDLE
    return None


def end_overdue(now: datetime | None = None) -> int:
    """Sessions past their site's maximum duration or idle timeout end (the minute's sweep; one
    query for the live sessions with their site's policy, whatever their number)."""
    now = now or timezone.now()
    ended = 0
    live = policies.with_policies(
        RemoteSession.objects.filter(ended_at__isnull=True, started_at__isnull=False).select_related("psa_task")
    )
    for session in live:
        reason = overdue_reason(session, policies.loaded_policy(session), now)
        if reason is not None:
            ended += end_by_system(session, reason)
    return ended


def end_misused() -> int:
    """Live sessions whose join credentials were used again (a MeshCentral login token's second
    login) end: ``session.credentials_misused`` in the history with what the provider saw, then the
    end (reason ``credentials_misused``), which revokes the credentials. The minute's sweep; a
    provider it cannot ask is logged and asked again the next minute."""
    watched = _providers_that("hands_out_credentials")
    ended = 0
    live = RemoteSession.objects.filter(provider__in=watched, ended_at__isnull=True, started_at__isnull=False)
    for session in live.select_related("psa_task"):
        try:
            seen = providers.get(session.provider).misuse(session)
        except Exception:
            log.exception(
                "session %s: its provider could not be asked whether its credentials were misused", session.pk
            )
            continue
        if seen is None:
            continue
        with transaction.atomic():
            history.append(SYSTEM, "session.credentials_misused", session, site_id=session.site_id, payload=seen)
            ended += end_by_system(session, EndReason.CREDENTIALS_MISUSED)
    return ended


MAX_DURATION_LIMIT = 24 * 3600  # the longest a session may be let last (as a script's timeout)
POLICY_ACTION = "session_policy.propose"


def propose_policy(user, *, site: str, **fields) -> SessionPolicy:
    """An admin proposes the next version of a site's session policy; it rules nothing until an
    approver who is not its author approves it (rmm.artefacts.services.decide). Rules not given
    keep their value in the policy in force (or the defaults)."""
    engine.require_role(user, "manage_access", POLICY_ACTION)
    target = access.visible_sites(user).filter(name=site or "").first()
    if target is None:
        history.record_refusal(
            user, POLICY_ACTION, reason="no such site in the caller's sites", payload={"site": str(site)}
        )
        raise NotFound("No such site.", field="site")
    unknown = set(fields) - set(policies.RULES)
    if unknown:
        raise InvalidInput(f"Unknown policy fields: {', '.join(sorted(unknown))}.", field="policy")
    current = policies.policy_for(target)
    rules = {rule: fields.get(rule, getattr(current, rule)) for rule in policies.RULES}
    _check_rules(rules)

    def write(number: int) -> SessionPolicy:
        version = SessionPolicy.objects.create(site=target, version=number, author=user, **rules)
        history.append(
            user, "session_policy.proposed", version, site_id=target.pk, payload={"version": number, **rules}
        )
        return version

    return artefacts.create_version(SessionPolicy, target, write, label="session policy", lineage="site")


def _check_rules(rules: dict) -> None:
    for name in ("allowed", "approval_required"):
        if not isinstance(rules[name], bool):
            raise InvalidInput("Must be true or false.", field=name)
    for name in ("max_duration_seconds", "idle_timeout_seconds"):
        value = rules[name]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DURATION_LIMIT:
            raise InvalidInput(f"Must be a whole number of seconds from 1 to {MAX_DURATION_LIMIT}.", field=name)
    if rules["idle_timeout_seconds"] > rules["max_duration_seconds"]:
        raise InvalidInput("Must not be longer than max_duration_seconds.", field="idle_timeout_seconds")


# --- the built-in terminal's relay (sessions.consumers) ------------------------------------------


def mint_join_token(user, session: RemoteSession) -> tuple[str, str]:
    """A single-use ticket for this user's browser to join the session's relay once: the
    technician who opened it types; an admin watches. (token, mode)"""
    if session.initiated_by_id == user.pk and access.can(user, "open_sessions"):
        mode = JoinMode.INTERACTIVE
    elif access.can(user, "manage_access"):
        mode = JoinMode.WATCH
    else:
        raise Forbidden("Only the technician who opened the session, or an admin, may join it.")
    token = secrets.token_urlsafe(32)
    JoinToken.objects.create(session=session, user=user, token_hash=_hash(token), mode=mode)
    return token, mode


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def redeem_join_token(user, session_id, token: str) -> tuple[RemoteSession, str]:
    """The browser's ticket, used once, by the user it was minted for, on a session that has not
    ended: the session and the mode. Anything else is refused and recorded."""
    action = "remote_session.join"
    session = (
        RemoteSession.objects.select_related("psa_task")
        .filter(pk=session_id, site__in=access.visible_sites(user))
        .first()
    )
    if session is None:
        history.record_refusal(
            user, action, reason="no such session in the caller's sites", payload={"session": str(session_id)}
        )
        raise NotFound("No such session.")
    ticket = JoinToken.objects.filter(session=session, token_hash=_hash(token or "")).first()
    problem = None
    if ticket is None:
        problem = "unknown join token"
    elif ticket.user_id != user.pk:
        problem = "join token of another user"
    elif timezone.now() - ticket.created_at > JOIN_TOKEN_LIFETIME:
        problem = "join token expired"
    elif session.ended_at is not None:
        problem = "the session has ended"
    elif not JoinToken.objects.filter(pk=ticket.pk, used_at__isnull=True).update(used_at=timezone.now()):
        problem = "join token used twice"
    if problem:
        history.record_refusal(user, action, session, reason=problem, site_id=session.site_id)
        raise Forbidden(f"Refused: {problem}.")
    history.append(user, "remote_session.joined", session, site_id=session.site_id, payload={"mode": ticket.mode})
    return session, ticket.mode


def relay_opened(agent, session_id) -> RemoteSession:
    """The agent opened the session's websocket: only its own asset's session, whose step it
    holds running, and only once. The session starts now (``session.started``)."""
    action = "remote_session.relay"
    session = RemoteSession.objects.select_related("psa_task", "site").filter(pk=session_id).first()
    problem = None
    if session is None or session.asset_id != agent.asset_id:
        problem = "no such session on the agent's asset"
    elif session.ended_at is not None:
        problem = "the session has ended"
    elif session.relay_opened_at is not None:
        problem = "the session's relay is already open"
    elif not engine.job_instructions(session).filter(agent=agent, status=JobStatus.RUNNING).exists():
        problem = "the agent holds no running step of the session"
    if problem:
        history.record_refusal(
            history.actor_of(agent),
            action,
            session,
            reason=problem,
            site_id=agent.asset.site_id,
            payload={"session": str(session_id)},
        )
        raise Forbidden(f"Refused: {problem}.")
    now = timezone.now()
    with transaction.atomic():
        if not RemoteSession.objects.filter(pk=session.pk, relay_opened_at__isnull=True, ended_at__isnull=True).update(
            relay_opened_at=now, last_activity_at=now
        ):
            raise Conflict("The session's relay is already open, or it ended.")
        session.relay_opened_at = session.last_activity_at = now
        history.append(
            history.actor_of(agent),
            "session.started",
            session,
            site_id=session.site_id,
            payload={"asset": str(session.asset_id), "privileged": session.privileged, "provider": session.provider},
        )
    return session


def refuse_frame(user, session: RemoteSession) -> None:
    """A browser's frame came after the session ended: it goes nowhere, and is recorded."""
    history.record_refusal(
        user, "remote_session.frame", session, reason="a frame on an ended session", site_id=session.site_id
    )


def relay_closed(session_id) -> None:
    """The relay wrote its last chunk: the recording is sealed now (a task, on commit)."""
    RemoteSession.objects.filter(pk=session_id, relay_closed_at__isnull=True).update(relay_closed_at=timezone.now())
    enqueue_on_commit(SEAL_TASK, str(session_id))


def record_chunk(session_id, index: int, offset: int, size: int, sha256: str, chain: str, blob: str) -> RecordingChunk:
    """One chunk of a session's recording, stored as ``blob``, in its place in the chain (the
    recorder writes the blob, then this row)."""
    return RecordingChunk.objects.create(
        session_id=session_id, index=index, offset=offset, size=size, sha256=sha256, chain=chain, blob=blob
    )


def touch(session_id, at: datetime) -> None:
    """The last byte relayed either way, as the relay records it (at most every
    ACTIVITY_SECONDS while bytes flow): the sweep's idle timeout counts from it."""
    RemoteSession.objects.filter(pk=session_id).update(last_activity_at=at)


def seal_recording(session_id) -> RmmEvidence | None:
    """The ended session's chunks, verified, become one recording blob whose sha256 is the
    ``session_recording`` evidence record (its history event lists the chunks and their chain);
    the session is marked recorded and the outbox tells the PSA (``session.recorded``).

    Idempotent, whoever ended the session: a sealed one answers its record; one whose recording
    failed, or without chunks, has none; one whose relay may still write its last chunk waits
    (up to SEAL_WAIT; the minute's sweep tries again)."""
    session = RemoteSession.objects.select_related("asset", "psa_task").get(pk=session_id)
    if session.recorded:
        return _recording_evidence(session)
    if session.ended_at is None or session.end_reason == EndReason.RECORDING_FAILED:
        return None
    if not RecordingChunk.objects.filter(session=session).exists() and not _fetch_recording(session):
        return None
    relay_writing = session.relay_opened_at is not None and session.relay_closed_at is None
    if relay_writing and timezone.now() - session.ended_at < SEAL_WAIT:
        return None
    extension, form = providers.get(session.provider).recording_format
    digest, uri, size, chunks = recording.seal(session.pk, extension)
    with transaction.atomic():
        if not RemoteSession.objects.filter(pk=session.pk, recorded=False).update(
            recorded=True, recording_uri=uri, recording_sha256=digest
        ):
            return _recording_evidence(session)  # sealed meanwhile by another task
        row = evidence.record(
            asset=session.asset,
            evidence_type=kind.SESSION_RECORDING,
            related_entity="remote_session",
            related_id=session.pk,
            stored=(digest, uri),
            site_id=session.site_id,
            psa_task_id=session.psa_task_id,
            payload={"session": str(session.pk), "size": size, "format": form, "chunks": chunks},
        )
        session.recorded, session.recording_uri, session.recording_sha256 = True, uri, digest
        outbox.emit(
            RECORDED,
            session,
            site_id=session.site_id,
            data={
                "psa_task_id": str(session.psa_task_id),
                "psa_case_id": str(session.psa_task.case_id),
                "recording_sha256": digest,
                "evidence": str(row.pk),
                "size": size,
            },
        )
    return row


def _fetch_recording(session: RemoteSession) -> bool:
    """A provider that records itself hands its recording back; it is written into the session's
    chunk chain (:func:`record_chunk`), to be sealed as the relay's is. False when there is none
    (yet: MeshCentral writes it when the session's last tunnel closes; the minute's sweep tries again)."""
    carrier = providers.get(session.provider)
    if not carrier.records_itself:
        return False
    pieces = carrier.fetch_recording(session)
    if pieces is None:
        return False
    try:
        recording.store_fetched(session.pk, pieces)
    except providers.RecordingUnavailable as exc:
        log.info("session %s: no recording from %s yet: %s", session.pk, session.provider, exc)
        return False
    except IntegrityError:
        pass  # another task stored it meanwhile: sealed from its chunks
    return True


def _recording_evidence(session: RemoteSession) -> RmmEvidence | None:
    return RmmEvidence.objects.filter(
        related_entity="remote_session", related_id=session.pk, evidence_type=kind.SESSION_RECORDING
    ).first()


def forget_join_tokens(now: datetime | None = None) -> int:
    """The minute's sweep: join tokens past their lifetime can never be redeemed; they go."""
    deleted, _ = JoinToken.objects.filter(created_at__lt=(now or timezone.now()) - JOIN_TOKEN_LIFETIME).delete()
    return deleted


def seal_pending(now: datetime | None = None) -> int:
    """The minute's retry: recordings of sessions ended within SEAL_RETRY and not sealed yet (a
    task lost, a relay whose worker died before its last chunk). How many were sealed."""
    now = now or timezone.now()
    fetching = _providers_that("records_itself")
    pending = (
        RemoteSession.objects.filter(recorded=False, ended_at__gte=now - SEAL_RETRY)
        .filter(Q(chunks__isnull=False) | Q(provider__in=fetching, started_at__isnull=False))
        .exclude(end_reason=EndReason.RECORDING_FAILED)
        .values_list("pk", flat=True)
        .distinct()
    )
    sealed = 0
    for session_id in pending:
        try:
            sealed += seal_recording(session_id) is not None
        except (recording.RecordingFailed, OSError):
            log.exception("session %s: its recording could not be sealed", session_id)
    report_unsealed(now)
    return sealed


def _providers_that(trait: str) -> list[str]:
    """The names of the registered providers that have ``trait`` (a Provider flag)."""
    return [name for name in providers.names() if getattr(providers.get(name), trait)]


def report_unsealed(now: datetime | None = None) -> int:
    """Sessions that should have a recording (chunks written, or a provider that records itself
    and started) and still had none sealed when the retry stopped (SEAL_RETRY after their end):
    ``session.recording_unsealed`` in the history, once each, and an error in the log. How many."""
    now = now or timezone.now()
    fetching = _providers_that("records_itself")
    given_up = {
        str(session.pk): session
        for session in RemoteSession.objects.filter(
            recorded=False, ended_at__lt=now - SEAL_RETRY, ended_at__gte=now - SEAL_RETRY - UNSEALED_LOOKBACK
        )
        .filter(Q(chunks__isnull=False) | Q(provider__in=fetching, started_at__isnull=False))
        .exclude(end_reason=EndReason.RECORDING_FAILED)
        .only("pk", "site_id", "provider", "ended_at")
        .distinct()
    }
    if not given_up:
        return 0
    told = set(
        HistoryEvent.objects.filter(action=UNSEALED, subject_id__in=list(given_up)).values_list("subject_id", flat=True)
    )
    for session_id, session in given_up.items():
        if session_id in told:
            continue
        log.error("session %s: its recording was not sealed within %s of its end", session_id, SEAL_RETRY)
        chunks = RecordingChunk.objects.filter(session_id=session.pk).count()
        payload = {"provider": session.provider, "ended_at": session.ended_at.isoformat(), "chunks": chunks}
        history.append(SYSTEM, UNSEALED, session, site_id=session.site_id, payload=payload)
    return len(given_up) - len(told)
