"""Sites, enrollment, agents' lifecycle (rotation, revocation, presence, reboots) and assets'
retirement. What agents report of actual state is :mod:`.facts`; its entry points are named here
for callers, as ``inventory.<name>``."""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from rmm.access import roles as access
from rmm.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from rmm.core.text import unstorable
from rmm.engine import events
from rmm.engine import services as engine
from rmm.history import services as history
from rmm.inventory.models import Agent, Asset, AssetFacts, EnrollmentToken, RefusalWindow, Site
from rmm.inventory.services.facts import FactReport as FactReport
from rmm.inventory.services.facts import clean_fact_reports as clean_fact_reports
from rmm.inventory.services.facts import clean_facts as clean_facts
from rmm.inventory.services.facts import record_facts as record_facts
from rmm.inventory.services.facts import record_namespaces as record_namespaces
from rmm.keys import keyset
from rmm_agent.protocol import facts_hash as compute_facts_hash


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()  # any string a caller sends


def get_or_create_site(name: str, actor=None) -> Site:
    name = (name or "").strip()
    if not name:
        raise InvalidInput("A site needs a name.", field="site")
    with transaction.atomic():
        site, created = Site.objects.get_or_create(name=name)
        if created:
            history.append(actor, "site.created", site, site_id=site.pk, payload={"name": name})
    return site


def create_enrollment_token(
    site: Site, actor=None, *, ttl_hours: int | None = None, max_uses: int | None = None
) -> tuple[EnrollmentToken, str]:
    """Return the token row and its secret; only the hash is kept."""
    secret = "enr_" + secrets.token_urlsafe(32)
    ttl = ttl_hours if ttl_hours is not None else settings.RMM_ENROLLMENT_TOKEN_TTL_HOURS
    with transaction.atomic():
        token = EnrollmentToken.objects.create(
            site=site,
            token_hash=hash_secret(secret),
            expires_at=timezone.now() + timedelta(hours=ttl),
            max_uses=max_uses if max_uses is not None else settings.RMM_ENROLLMENT_TOKEN_USES,
            created_by=history.actor_of(actor),
        )
        history.append(
            actor,
            "enrollment_token.created",
            token,
            site_id=site.pk,
            payload={"expires_at": token.expires_at.isoformat(), "max_uses": token.max_uses},
        )
    return token, secret


def revoke_enrollment_token(token: EnrollmentToken, by, reason: str = "") -> EnrollmentToken:
    """End a token before its expiry or use limit (leaked, or issued for the wrong site): every
    later enrollment with it is refused and recorded. Agents it already enrolled keep working;
    revoke those one by one. ``by`` is a user, who must manage agents on the token's site, or a
    command's actor string. One conditional update, recorded in the history with who and why."""
    if not isinstance(by, str):
        if not access.may_see_site(by, token.site_id):
            history.record_refusal(
                by, "enrollment_token.revoke", token, reason="site not granted", site_id=token.site_id
            )
            raise NotFound("Not found.")
        if not access.can(by, "manage_agents"):
            history.record_refusal(
                by, "enrollment_token.revoke", token, reason="role may not manage agents", site_id=token.site_id
            )
            raise Forbidden("Your role may not revoke enrollment tokens.")
    reason = (reason or "").strip()
    with transaction.atomic():
        done = EnrollmentToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now(), revoked_by=history.actor_of(by)
        )
        if not done:
            raise Conflict("This enrollment token is revoked already.")
        token.refresh_from_db()
        history.append(
            by,
            "enrollment_token.revoked",
            token,
            site_id=token.site_id,
            payload={"use_count": token.use_count, "max_uses": token.max_uses, "reason": reason},
        )
    return token


def _refused_because(token: EnrollmentToken | None, now) -> str:
    """Why an enrollment with ``token`` (None: no such token) was refused, as the agent is told."""
    if token is None:
        return "unknown enrollment token"
    if token.revoked_at is not None:
        return "enrollment token revoked"
    if token.expires_at <= now:
        return "enrollment token expired"
    return "enrollment token used up"


def enroll_agent(
    token_secret: str, facts: dict, address: str = "", *, capabilities: str = "", protocol: int = 1
) -> tuple[Agent, str]:
    """Consume one use of an enrollment token; create the asset and its agent, with the
    ``capabilities`` and ``protocol`` it says it has (so work created before its first heartbeat
    is signed for them). In one transaction: an enrollment that fails at any point uses nothing up."""
    facts = clean_facts(facts)
    hostname = (facts.get("hostname") or "").strip()
    if not hostname:
        raise InvalidInput("Facts must include the hostname.", field="facts")
    now = timezone.now()
    # The agent will trust the instruction keys that are not retired, and is recorded as holding
    # the newest (checked before the token is used: no key, no enrollment, the use not lost).
    trusted = keyset.current().active(keyset.INSTRUCTIONS)
    if not trusted:
        raise keyset.KeyUnavailable("The server has no instruction-signing key yet; enrollment is not possible.")
    token_hash = hash_secret(token_secret or "")
    secret = secrets.token_urlsafe(32)
    with transaction.atomic():
        # Conditional update: two agents racing for the last use cannot both get it.
        used = EnrollmentToken.objects.filter(
            token_hash=token_hash, revoked_at__isnull=True, expires_at__gt=now, use_count__lt=F("max_uses")
        ).update(use_count=F("use_count") + 1)
        if used:
            agent = _enroll(
                EnrollmentToken.objects.select_related("site").get(token_hash=token_hash),
                facts,
                now,
                secret,
                Agent(signing_key_id=trusted[-1].key_id, capabilities=capabilities, protocol=protocol),
            )
    if not used:
        token = EnrollmentToken.objects.filter(token_hash=token_hash).first()
        reason = _refused_because(token, now)
        record_unauthenticated_refusal(
            address,
            "agent.enroll",
            token,
            reason=reason,
            site_id=token.site_id if token else None,
            payload={"hostname": hostname},
        )
        raise Forbidden(f"Enrollment refused: {reason}.")
    return agent, secret


def _enroll(token: EnrollmentToken, facts: dict, now, secret: str, agent: Agent) -> Agent:
    """The asset, ``agent`` (its key, capabilities and protocol set) and its first facts, in the
    caller's transaction."""
    hostname = facts["hostname"].strip()
    asset = Asset.objects.create(
        site=token.site,
        hostname=hostname,
        os=str(facts.get("os", ""))[:100],
        architecture=str(facts.get("architecture", ""))[:50],
    )
    agent.asset, agent.secret_hash = asset, hash_secret(secret)
    agent.version = str(facts.get("agent_version", ""))[:50]
    agent.save(force_insert=True)
    AssetFacts.objects.create(asset=asset, facts=facts, facts_hash=compute_facts_hash(facts), reported_at=now)
    history.append(
        history.actor_of(agent),
        "agent.enrolled",
        agent,
        site_id=token.site_id,
        payload={
            "asset_id": str(asset.pk),
            "hostname": hostname,
            "enrollment_token": str(token.pk),
            "protocol": agent.protocol,
            "capabilities": [name for name in agent.capabilities.split(",") if name],
        },
    )
    return agent


def authenticate_agent(header: str) -> Agent | None:
    """``Agent <id>:<secret>`` → the agent, in one query; None when unknown, wrong or revoked.

    During a rotation both secrets work until the agent first uses the new one, which then
    replaces the old (so a lost answer cannot lock an agent out).
    """
    if not header or not header.startswith("Agent "):
        return None
    agent_id, _, secret = header[6:].strip().partition(":")
    try:
        agent = _agent_with_asset(agent_id)
    except (ValidationError, ValueError):
        return None
    if agent is None or agent.revoked_at is not None:
        return None
    digest = hash_secret(secret)
    if hmac.compare_digest(agent.secret_hash, digest):
        return agent
    if agent.pending_secret_hash and hmac.compare_digest(agent.pending_secret_hash, digest):
        with transaction.atomic():
            Agent.objects.filter(pk=agent.pk, pending_secret_hash=digest).update(
                secret_hash=digest, pending_secret_hash="", rotation_requested_at=None
            )
            history.append(history.actor_of(agent), "agent.secret_rotated", agent, site_id=agent.asset.site_id)
        agent.secret_hash, agent.pending_secret_hash, agent.rotation_requested_at = digest, "", None
        return agent
    return None


def _agent_with_asset(agent_id: str) -> Agent | None:
    """``Agent.objects.select_related("asset").get(pk=agent_id)``, or None, with its SQL written
    once: every agent call starts here, and building that query through the ORM each time was
    the largest part of a heartbeat's CPU (docs/performance.md). Values go through the
    converters the ORM applies, so the instances are what the ORM would have built."""
    pk = Agent._meta.pk.get_db_prep_value(Agent._meta.pk.to_python(agent_id), connection)
    sql, converters, split = _agent_loader(connection.vendor)
    with connection.cursor() as cursor:
        cursor.execute(sql, [pk])
        row = cursor.fetchone()
    if row is None:
        return None
    values = list(row)
    for index, expression, functions in converters:
        for convert in functions:
            values[index] = convert(values[index], expression, connection)
    agent = Agent.from_db(connection.alias, None, values[:split])
    Agent.asset.field.set_cached_value(agent, Asset.from_db(connection.alias, None, values[split:]))
    return agent


@functools.cache
def _agent_loader(vendor: str) -> tuple[str, list, int]:
    """The statement, each column's converters, and where the asset's columns start."""
    quote = connection.ops.quote_name
    fields = list(Agent._meta.concrete_fields) + list(Asset._meta.concrete_fields)
    split = len(Agent._meta.concrete_fields)
    columns = [f"{'g' if n < split else 's'}.{quote(f.column)}" for n, f in enumerate(fields)]
    sql = (
        f"SELECT {', '.join(columns)} FROM {quote(Agent._meta.db_table)} g"  # noqa: S608 (names from the models)
        f" JOIN {quote(Asset._meta.db_table)} s ON s.{quote(Asset._meta.pk.column)}"
        f" = g.{quote(Agent._meta.get_field('asset').column)} WHERE g.{quote(Agent._meta.pk.column)} = %s"
    )
    converters = []
    for index, field in enumerate(fields):
        expression = field.get_col(field.model._meta.db_table)
        functions = connection.ops.get_db_converters(expression) + field.get_db_converters(connection)
        if functions:
            converters.append((index, expression, functions))
    return sql, converters, split


def issue_rotated_secret(agent: Agent, *, requested: bool | None = None) -> str | None:
    """When a rotation was asked for, hand the agent a fresh secret (on every call until it uses one).
    ``requested``: whether one was asked for, when the caller read it after ``agent`` was loaded
    (a held heartbeat, woken by the request)."""
    if not (agent.rotation_requested_at is not None if requested is None else requested):
        return None
    secret = secrets.token_urlsafe(32)
    Agent.objects.filter(pk=agent.pk).update(pending_secret_hash=hash_secret(secret))
    return secret


def _require_admin(user, action: str, agent: Agent) -> None:
    from rmm.access import roles as access

    if not access.can(user, "manage_agents") or not access.may_see_site(user, agent.asset.site_id):
        history.record_refusal(user, action, agent, reason="role may not manage agents", site_id=agent.asset.site_id)
        raise Forbidden("Your role may not manage agents.")


def request_rotation(user, agent: Agent) -> None:
    """The agent gets a new secret at its next heartbeat; the old one works until it uses it."""
    _require_admin(user, "agent.rotate", agent)
    with transaction.atomic():
        Agent.objects.filter(pk=agent.pk).update(rotation_requested_at=timezone.now())
        history.append(user, "agent.rotation_requested", agent, site_id=agent.asset.site_id)
        events.wake_agents([agent.pk])  # its next heartbeat, now, brings the new secret


def revoke_agent(user, agent: Agent, reason: str) -> int:
    """A revoked agent's next call gets 401 and nothing more. Its queued and running instructions
    end aborted once the revocation commits, and its held heartbeat is told to kill what it runs
    (``engine.abort_agent_work``). Returns how many instructions were aborted."""
    _require_admin(user, "agent.revoke", agent)
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("Say why the agent is revoked.", field="reason")
    with transaction.atomic():
        if not _revoke(user, agent, reason):
            raise Conflict("This agent is already revoked.")
    return engine.abort_agent_work(agent, user, f"agent revoked: {reason}")


def _revoke(actor, agent: Agent, reason: str, **payload) -> bool:
    """Inside the caller's transaction: revoke ``agent`` and record it; False when it already was.
    Its work is aborted by ``engine.abort_agent_work`` once the transaction has committed."""
    if not Agent.objects.filter(pk=agent.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now(), revoked_reason=reason
    ):
        return False
    history.append(actor, "agent.revoked", agent, site_id=agent.asset.site_id, payload={"reason": reason, **payload})
    return True


def retire_asset(actor, asset: Asset, reason: str) -> Asset:
    """The asset leaves the fleet: its agent is revoked as ``revoke_agent`` does (its queued and
    running work aborted), and it is gone from active lists, counts and job targets. Its row,
    history and evidence stay, so what was done on it can still be shown. Who may: whoever may
    manage the site's agents (a retired asset's agent can never call again)."""
    if not access.can(actor, "manage_agents") or not access.may_see_site(actor, asset.site_id):
        history.record_refusal(actor, "asset.retire", asset, reason="role may not manage agents", site_id=asset.site_id)
        raise Forbidden("Your role may not retire assets.")
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("Say why the asset is retired.", field="reason")
    if unstorable(reason):
        raise InvalidInput("The reason holds characters that cannot be stored.", field="reason")
    with transaction.atomic():
        if not Asset.objects.filter(pk=asset.pk, retired_at__isnull=True).update(
            retired_at=timezone.now(), retired_by=history.actor_of(actor), retired_reason=reason
        ):
            raise Conflict("This asset is already retired.")
        agent = Agent.objects.filter(asset_id=asset.pk).select_related("asset").first()
        revoked = agent is not None and _revoke(actor, agent, f"asset retired: {reason}", asset_retired=True)
        history.append(
            actor,
            "asset.retired",
            asset,
            site_id=asset.site_id,
            payload={"reason": reason, "hostname": asset.hostname, "agent_revoked": str(agent.pk) if revoked else None},
        )
    if revoked:
        engine.abort_agent_work(agent, actor, f"asset retired: {reason}")
    asset.refresh_from_db()
    return asset


def set_site_policy(actor, site: Site, *, allow_self_authorized_jobs: bool) -> Site:
    """Change a site's policy; recorded with what it was before. ``actor`` is a user (who must
    hold ``manage_access``) or a command's actor string."""
    if not isinstance(actor, str) and not (access.can(actor, "manage_access") and access.may_see_site(actor, site.pk)):
        history.record_refusal(actor, "site.policy", site, reason="role may not manage access", site_id=site.pk)
        raise Forbidden("Your role may not change a site's policy.")
    with transaction.atomic():
        site = Site.objects.select_for_update().get(pk=site.pk)
        before = site.allow_self_authorized_jobs
        site.allow_self_authorized_jobs = bool(allow_self_authorized_jobs)
        site.save(update_fields=["allow_self_authorized_jobs"])
        history.append(
            actor,
            "site.policy_changed",
            site,
            site_id=site.pk,
            payload={
                "site": site.name,
                "before": {"allow_self_authorized_jobs": before},
                "after": {"allow_self_authorized_jobs": site.allow_self_authorized_jobs},
            },
        )
    return site


PRESENCE_BATCH = 1000  # agents marked per direction per sweep; the rest at the next one


def mark_presence(now) -> int:
    """Agents not seen for ``RMM_AGENT_OFFLINE_SECONDS`` become offline, and offline agents seen
    since become online again: ``offline_since`` set or cleared, ``agent.offline`` /
    ``agent.online`` to the outbox. Run by the engine's sweep under the history's lock, so two
    sweeps never tell the same change twice. Revoked agents and agents never seen are left alone.
    """
    from rmm.outbox import services as outbox

    cutoff = now - timedelta(seconds=settings.RMM_AGENT_OFFLINE_SECONDS)
    live = Agent.objects.filter(revoked_at__isnull=True, last_seen_at__isnull=False)
    fields = ("pk", "asset_id", "asset__site_id", "asset__hostname", "last_seen_at")
    rebooting = Q(rebooting_until__gte=now)  # not offline: rebooting, within its grace
    gone = live.filter(offline_since__isnull=True, last_seen_at__lt=cutoff).exclude(rebooting)
    back = live.filter(offline_since__isnull=False, last_seen_at__gte=cutoff)
    if not (gone | back).exists():
        return 0  # the usual minute: no lock taken, which every lease and result would wait for
    with transaction.atomic():
        history.lock()
        gone, back = (list(rows.values_list(*fields)[:PRESENCE_BATCH]) for rows in (gone, back))
        if gone:  # not seen since the look (a heartbeat does not wait for this lock)
            ids = [row[0] for row in gone]
            Agent.objects.filter(pk__in=ids, offline_since__isnull=True, last_seen_at__lt=cutoff).exclude(
                rebooting
            ).update(offline_since=now)
            marked = set(Agent.objects.filter(pk__in=ids, offline_since=now).values_list("pk", flat=True))
            gone = [row for row in gone if row[0] in marked]
        if back:
            Agent.objects.filter(pk__in=[row[0] for row in back]).update(offline_since=None)
        label = Agent._meta.label_lower
        outbox.emit_many(
            outbox.Emitted(
                event_type,
                label,
                str(pk),
                site_id,
                {"agent_id": str(pk), "asset_id": str(asset_id), "hostname": hostname, "last_seen_at": seen},
            )
            for event_type, rows in (("agent.offline", gone), ("agent.online", back))
            for pk, asset_id, site_id, hostname, seen in rows
        )
    return len(gone) + len(back)


def mark_rebooting(agent_id, actor, after) -> timedelta:
    """A step's result says the agent's endpoint reboots now (``after``: that instruction): the
    agent is rebooting, not offline, for ``RMM_REBOOT_GRACE_SECONDS``, which is returned."""
    grace = timedelta(seconds=settings.RMM_REBOOT_GRACE_SECONDS)
    until = timezone.now() + grace
    Agent.objects.filter(pk=agent_id).update(rebooting_until=until)
    history.append_many(
        [
            history.Event(
                history.actor_of(actor),
                "agent.rebooting",
                Agent._meta.label_lower,
                str(agent_id),
                after.site_id,
                {"after_instruction": str(after.pk), "until": until.isoformat()},
            )
        ]
    )
    return grace


def came_back(agent: Agent, after: str) -> bool:
    """The agent says it came back from the reboot after instruction ``after``: rebooting no
    more. False when it was not rebooting (a repeat, or its grace had run out)."""
    if not Agent.objects.filter(pk=agent.pk, rebooting_until__isnull=False).update(rebooting_until=None):
        return False
    agent.rebooting_until = None
    history.append(agent, "agent.came_back", agent, site_id=agent.asset.site_id, payload={"after_instruction": after})
    return True


def end_reboots(now) -> list:
    """Agents whose reboot's grace ran out are rebooting no more (they become offline as any
    agent not seen); returns their ids."""
    ids = list(Agent.objects.filter(rebooting_until__lt=now).values_list("pk", flat=True))
    Agent.objects.filter(pk__in=ids, rebooting_until__lt=now).update(rebooting_until=None)
    return ids


def record_unauthenticated_refusal(
    address: str, action: str, subject=None, *, reason: str, site_id=None, payload: dict | None = None, now=None
) -> bool:
    """Record the refusal of a caller that is not authenticated, per source (its IPv4 address or
    IPv6 /64, and the action) in a window of ``RMM_AGENT_REFUSAL_WINDOW_SECONDS``: the window's
    first refusal is appended at once (``refused.<action>``, with the address); the others are only counted, and
    the window closes with one ``refused.<action>.repeated`` event that gives the count, either
    at the source's next refusal after it or at the engine's sweep (:func:`close_refusal_windows`).
    So a flood grows the history by two events per source and window, not one per request.
    Call it outside the refused work's transaction, as ``history.record_refusal``. True when the
    refusal was appended, False when only counted."""
    from rmm.engine.agent_limits import source

    now = now or timezone.now()
    address = (address or "unknown")[:64]
    caller, address = address, source(address)  # windows are per IPv4 address or IPv6 /64
    opened_after = now - timedelta(seconds=settings.RMM_AGENT_REFUSAL_WINDOW_SECONDS)
    # Inside an open window: counted, in one query.
    if RefusalWindow.objects.filter(address=address, action=action, opened_at__gt=opened_after).update(
        refusals=F("refusals") + 1, last_at=now
    ):
        return False
    try:
        with transaction.atomic():
            window = RefusalWindow.objects.select_for_update().filter(address=address, action=action).first()
            if window is not None and window.opened_at > opened_after:  # opened meanwhile, elsewhere
                RefusalWindow.objects.filter(pk=window.pk).update(refusals=F("refusals") + 1, last_at=now)
                return False
            if window is None:
                RefusalWindow.objects.create(address=address, action=action, opened_at=now, last_at=now)
            else:
                _close_window(window)
                RefusalWindow.objects.filter(pk=window.pk).update(opened_at=now, last_at=now, refusals=1)
            recorded = {**(payload or {}), "address": caller}
            history.record_refusal("anonymous", action, subject, reason=reason, site_id=site_id, payload=recorded)
    except IntegrityError:  # another process opened this source's first window at the same time
        return record_unauthenticated_refusal(
            caller, action, subject, reason=reason, site_id=site_id, payload=payload, now=now
        )
    return True


def _close_window(window: RefusalWindow) -> None:
    """The closing event of a window that counted more than its first refusal, in the caller's
    transaction (which holds the window's row)."""
    if window.refusals <= 1:
        return
    history.record_refusal(
        "anonymous",
        f"{window.action}.repeated",
        reason=f"{window.refusals} refusals from {window.address}; only the first was recorded on its own",
        payload={
            "address": window.address,
            "refusals": window.refusals,
            "not_recorded": window.refusals - 1,
            "opened_at": window.opened_at.isoformat(),
            "last_at": window.last_at.isoformat(),
        },
    )


def close_refusal_windows(now=None) -> int:
    """The engine's sweep: close every window that has ended (its event, if it counted more than
    one refusal) and forget it. Returns how many closed."""
    now = now or timezone.now()
    ended = now - timedelta(seconds=settings.RMM_AGENT_REFUSAL_WINDOW_SECONDS)
    closed = 0
    for pk in list(RefusalWindow.objects.filter(opened_at__lte=ended).values_list("pk", flat=True)[:1000]):
        with transaction.atomic():
            window = RefusalWindow.objects.select_for_update(skip_locked=True).filter(pk=pk, opened_at__lte=ended)
            window = window.first()
            if window is None:  # reopened or being closed by a refusal that just came in
                continue
            _close_window(window)
            window.delete()
            closed += 1
    return closed
