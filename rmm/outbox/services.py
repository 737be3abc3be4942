"""The outbox (docs/psa-integration.md#being-told-what-happened).

:func:`emit` writes an event, and a delivery per subscribed endpoint, in the caller's transaction:
an event exists exactly when the change that caused it committed. The task cluster sends each
delivery once that transaction has committed (:func:`send_endpoint`: in batches per endpoint, over
one connection) and, if it fails, again after an
exponential backoff with jitter (:func:`send_due`, every minute), until it is delivered or has
used ``RMM_WEBHOOK_MAX_ATTEMPTS`` attempts and is ``dead``; a dead delivery can be replayed.
Every attempt is kept (:class:`Attempt`). Requests are signed per the Standard Webhooks
specification (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``); a repeat carries the
same id and the same body, so receivers de-duplicate on the id.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.core.signals import setting_changed
from django.db import transaction
from django.db.models import F, QuerySet
from django.dispatch import receiver
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from rmm.access import roles as access
from rmm.core.errors import Conflict, Forbidden, InvalidInput
from rmm.core.on_commit import enqueue_on_commit
from rmm.history import services as history
from rmm.inventory.models import Site
from rmm.outbox import addresses, transport
from rmm.outbox.models import Attempt, Delivery, DeliveryStatus, Endpoint, Event

logger = logging.getLogger("rmm.outbox")

PSA_ENDPOINT = "psa"
EVERY_TYPE = "*"  # in an endpoint's event_types: it hears every type
CLAIM_SECONDS = 120  # a delivery being sent is not sent by anyone else for this long
# Answers (no answer counts as 500) after which the rest of a batch is not tried: the receiver is
# down or asks us to slow down.
UNAVAILABLE = {429, *range(500, 600)}


def as_emitted(event: Event) -> dict:
    """The body of an event whose data was complete when it was emitted."""
    return event.data


@dataclass(frozen=True)
class EventType:
    name: str
    description: str
    build: Callable[[Event], dict]  # the body's "data", read when the event is first delivered


_types: dict[str, EventType] = {}


def register(name: str, description: str, build: Callable[[Event], dict] = as_emitted) -> None:
    """Event types are dotted names registered by the apps that emit them (in their AppConfig.ready).
    ``build`` reads the body's data at the first delivery (when what the causing transaction wrote
    is committed); by default it is the data given to :func:`emit`."""
    if name in _types and _types[name].build is not build:
        raise ValueError(f"event type {name} is registered twice")
    _types[name] = EventType(name, description, build)


def event_types() -> dict[str, EventType]:
    return dict(_types)


class OutboxError(Exception):
    pass


# --- the PSA's endpoint, from the settings --------------------------------------------------------

_psa: tuple[str, str, Endpoint] | None = None


def psa_endpoint() -> Endpoint | None:
    """The endpoint that ``RMM_PSA_WEBHOOK_URL`` names, subscribed to every event type (created or
    brought in step with the settings once per process), or None when it is not set."""
    global _psa
    url, secret = settings.RMM_PSA_WEBHOOK_URL, settings.RMM_PSA_WEBHOOK_SECRET
    if not url:
        return None
    if _psa is not None and _psa[:2] == (url, secret):
        return _psa[2]
    endpoint, _ = Endpoint.objects.update_or_create(
        name=PSA_ENDPOINT, defaults={"url": url, "secret": secret, "event_types": [EVERY_TYPE], "enabled": True}
    )
    _psa = (url, secret, endpoint)
    return endpoint


@receiver(setting_changed)
def _settings_changed(setting: str, **kwargs) -> None:
    global _psa
    if setting.startswith("RMM_PSA_WEBHOOK_"):
        _psa = None


def endpoints() -> list[Endpoint]:
    """Every enabled endpoint: the PSA's (no query once known) and the webhook subscriptions (one
    query, a second for their sites when there are any)."""
    psa = psa_endpoint()
    found = [psa] if psa is not None and psa.enabled else []
    subscriptions = Endpoint.objects.filter(enabled=True).exclude(name=PSA_ENDPOINT).prefetch_related("sites")
    return found + list(subscriptions)


def hears(endpoint: Endpoint, event_type: str, site_id) -> bool:
    """Whether ``endpoint`` hears an event of this type and site: an endpoint restricted to sites
    hears only events of those sites, never one without a site."""
    if event_type not in endpoint.event_types and EVERY_TYPE not in endpoint.event_types:
        return False
    if endpoint.name == PSA_ENDPOINT:
        return True
    site_ids = {str(site.pk) for site in endpoint.sites.all()}
    return not site_ids or (site_id is not None and str(site_id) in site_ids)


def subscribers(event_type: str, site_id=None, among: list[Endpoint] | None = None) -> list[Endpoint]:
    """The endpoints that hear ``event_type`` of ``site_id``."""
    return [endpoint for endpoint in (endpoints() if among is None else among) if hears(endpoint, event_type, site_id)]


def heard(event_type: str) -> bool:
    """Whether any endpoint hears ``event_type`` (of any site): an event whose facts cost queries to
    gather is looked into only when someone will be told."""
    return any(event_type in endpoint.event_types or EVERY_TYPE in endpoint.event_types for endpoint in endpoints())


# --- writing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Emitted:
    type: str
    subject_type: str
    subject_id: str
    site_id: object = None
    data: dict | None = None


def emit(event_type: str, subject, *, site_id=None, data: dict | None = None) -> None:
    """Record one event for every endpoint that hears it; call inside the causing transaction."""
    emit_many([Emitted(event_type, subject._meta.label_lower, str(subject.pk), site_id, data)])


def emit_many(items: Iterable[Emitted]) -> int:
    """Record many events in three statements, whatever their number; how many were recorded."""
    items = list(items)
    if not items:
        return 0
    unknown = {item.type for item in items} - set(_types)
    if unknown:
        raise OutboxError(f"unregistered event types: {sorted(unknown)}")
    events, deliveries = [], []
    every = endpoints()
    for item in items:
        told = subscribers(item.type, item.site_id, among=every)
        if not told:
            continue
        event = Event(
            type=item.type,
            subject_type=item.subject_type,
            subject_id=item.subject_id,
            site_id=item.site_id,
            data=_json_safe(item.data or {}),
        )
        events.append(event)
        now = timezone.now()
        deliveries += [Delivery(event=event, endpoint=endpoint, next_attempt_at=now) for endpoint in told]
    if not events:
        return 0
    _write(events, deliveries)
    return len(events)


def _write(events: list[Event], deliveries: list[Delivery]) -> None:
    """Store events and their deliveries; each delivery is sent once the transaction commits."""
    with transaction.atomic(savepoint=False):
        Event.objects.bulk_create(events)
        Delivery.objects.bulk_create(deliveries)
        for delivery in deliveries:
            enqueue_on_commit("rmm.outbox.tasks.deliver", str(delivery.pk))


def _json_safe(data: dict) -> dict:
    return json.loads(json.dumps(data, cls=DjangoJSONEncoder))


# --- sending --------------------------------------------------------------------------------------


def body_of(event: Event) -> bytes:
    """The event's body: built and stored at its first delivery, the same bytes ever after."""
    if event.body is not None:
        return bytes(event.body)
    message = {
        "type": event.type,
        "timestamp": event.created_at.isoformat(),
        "data": _json_safe(_types[event.type].build(event)),
    }
    body = json.dumps(message, sort_keys=True, separators=(",", ":")).encode()
    # The first builder to store it wins; a concurrent one reads the stored body back.
    if not Event.objects.filter(pk=event.pk, body__isnull=True).update(body=body):
        event.refresh_from_db(fields=["body"])
        return bytes(event.body)
    event.body = body
    return body


def signer(secret: str) -> Webhook:
    """A ``whsec_``-prefixed secret is base64, as Standard Webhooks defines; any other value is
    used as its UTF-8 bytes (a receiver verifies with ``whsec_`` + base64 of them)."""
    if secret.startswith("whsec_"):
        return Webhook(secret)
    return Webhook(secret.encode())


def backoff(attempts: int) -> timedelta:
    """The wait before the next attempt after ``attempts`` failed ones: doubling from
    ``RMM_WEBHOOK_RETRY_BASE_SECONDS``, at most an hour, with ±25 % jitter so that many failed
    deliveries do not return at once."""
    base = settings.RMM_WEBHOOK_RETRY_BASE_SECONDS * 2 ** (attempts - 1)
    seconds = min(base, 3600) * random.uniform(0.75, 1.25)  # noqa: S311 - jitter, not a secret
    return timedelta(seconds=seconds)


def deliver(delivery_id: str, now: datetime | None = None) -> str | None:
    """Send one delivery if it is due and nobody else is sending it; its status afterwards."""
    now = now or timezone.now()
    claimed = _claim(Delivery.objects.filter(pk=delivery_id), now, 1)
    if not claimed:
        return None
    with transport.Connection(claimed[0].endpoint.url, settings.RMM_WEBHOOK_TIMEOUT_SECONDS) as connection:
        return _send(claimed[0].endpoint, claimed, connection).statuses[claimed[0].pk]


def send_endpoint(delivery_id: str, now: datetime | None = None) -> int:
    """What the task queued for each new delivery does: send what is due for the delivery's
    endpoint, oldest first, ``RMM_WEBHOOK_BATCH`` at a time over one connection, until nothing is
    due, the endpoint fails, or ``RMM_WEBHOOK_ROUND_SECONDS`` passed. The tasks of deliveries sent
    meanwhile find nothing due and return; how many were delivered."""
    endpoint = Endpoint.objects.filter(deliveries=delivery_id).first()
    if endpoint is None:
        return 0
    deadline = time.monotonic() + settings.RMM_WEBHOOK_ROUND_SECONDS
    delivered = 0
    with transport.Connection(endpoint.url, settings.RMM_WEBHOOK_TIMEOUT_SECONDS) as connection:
        while time.monotonic() < deadline:
            due = Delivery.objects.filter(endpoint=endpoint)
            claimed = _claim(due, now or timezone.now(), settings.RMM_WEBHOOK_BATCH)
            if not claimed:
                break
            sent = _send(claimed[0].endpoint, claimed, connection)
            delivered += sum(status == DeliveryStatus.DELIVERED for status in sent.statuses.values())
            if sent.stopped:
                break
    return delivered


def _claim(deliveries: QuerySet[Delivery], now: datetime, limit: int) -> list[Delivery]:
    """Up to ``limit`` of these that are due, oldest first, now being sent by this worker only
    (until ``CLAIM_SECONDS`` from ``now``): the claim's condition is checked again row by row, so
    two workers never claim the same one."""
    due = deliveries.filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=now).order_by("next_attempt_at")
    ids = list(due.values_list("pk", flat=True)[:limit])
    if not ids:
        return []
    claim = uuid.uuid4()
    Delivery.objects.filter(pk__in=ids, status=DeliveryStatus.PENDING, next_attempt_at__lte=now).update(
        next_attempt_at=now + timedelta(seconds=CLAIM_SECONDS), claim=claim
    )
    claimed = {d.pk: d for d in Delivery.objects.filter(pk__in=ids, claim=claim).select_related("event", "endpoint")}
    return [claimed[pk] for pk in ids if pk in claimed]


@dataclass
class _Tried:
    delivery: Delivery
    started: datetime
    status_code: int | None
    latency: int
    error: str


@dataclass
class _Sent:
    statuses: dict  # delivery id → its status afterwards
    stopped: bool  # the endpoint failed as a whole: the rest of the batch was not tried


def _refusal(endpoint: Endpoint) -> str:
    """Why nothing may be sent to the endpoint now, or ""."""
    if not endpoint.enabled:
        return "OutboxError: the endpoint is disabled"
    if not endpoint.secret:
        return "OutboxError: the endpoint has no secret: nothing is sent unsigned"
    if not endpoint.url.startswith(("https://", "http://")):
        return "OutboxError: the endpoint's URL must be http(s)"
    if endpoint.name != PSA_ENDPOINT:  # the PSA's URL is the operator's; a subscription's is checked again
        reason = addresses.refusal(endpoint.url)
        if reason:
            return f"OutboxError: the URL is refused: {reason}"
    return ""


def _send(endpoint: Endpoint, deliveries: list[Delivery], connection: transport.Connection) -> _Sent:
    """Send claimed deliveries of one endpoint in order over one connection and record every
    attempt. An endpoint that cannot be reached, or answers 429 or 5xx, is not tried again for the
    rest: they wait as long as the failed one, without an attempt counted."""
    tried: list[_Tried] = []
    rest: list[Delivery] = []
    refusal = _refusal(endpoint)
    if refusal:
        tried = [_Tried(d, timezone.now(), None, 0, refusal) for d in deliveries]
    else:
        for n, delivery in enumerate(deliveries):
            outcome = _post(connection, endpoint, delivery)
            tried.append(outcome)
            if outcome.error and (outcome.status_code or 500) in UNAVAILABLE:
                rest = deliveries[n + 1 :]
                break
    return _Sent(_record(tried, rest), stopped=bool(rest or refusal))


def signature(endpoint: Endpoint, message_id: str, at: datetime, body: bytes) -> str:
    """``webhook-signature``: signed with the endpoint's secret and, during a rotation's overlap,
    with the one before too (space-separated; a receiver accepts either)."""
    secrets = [endpoint.secret]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and at < expires:
        secrets.append(endpoint.previous_secret)
    return " ".join(signer(secret).sign(message_id, at, body) for secret in secrets)


def _post(connection: transport.Connection, endpoint: Endpoint, delivery: Delivery) -> _Tried:
    event = delivery.event
    started, clock = timezone.now(), time.monotonic()
    status_code, error = None, ""
    try:
        body = body_of(event)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "rmm-outbox",
            "webhook-id": event.message_id,
            "webhook-timestamp": str(int(started.timestamp())),
            "webhook-signature": signature(endpoint, event.message_id, started, body),
        }
        status_code, excerpt = connection.post(body, headers)
        if not 200 <= status_code < 300:  # a redirect too: following it could reach a refused address
            error = f"HTTP {status_code}: {excerpt}" if excerpt else f"HTTP {status_code}"
    except (OSError, ValueError, transport.HTTPException) as exc:
        error = f"{exc.__class__.__name__}: {exc}"[:2000]
    return _Tried(delivery, started, status_code, int((time.monotonic() - clock) * 1000), error)


def _record(tried: list[_Tried], rest: list[Delivery]) -> dict:
    """Keep every attempt and move each delivery on (delivered, due again after a backoff, or
    dead) in a constant number of statements, the history's events among them; the untried rest
    waits as long as the last failed one."""
    now = timezone.now()
    statuses, delivered, events = {}, {}, []
    with transaction.atomic():
        Attempt.objects.bulk_create(
            Attempt(
                delivery=t.delivery,
                number=t.delivery.attempts + 1,
                started_at=t.started,
                status_code=t.status_code,
                latency_ms=t.latency,
                error=t.error,
            )
            for t in tried
        )
        retry_at = None
        for t in tried:
            delivery, number = t.delivery, t.delivery.attempts + 1
            if not t.error:
                status = DeliveryStatus.DELIVERED
                delivered.setdefault(t.status_code, []).append(delivery.pk)
            elif number - delivery.replayed_after >= settings.RMM_WEBHOOK_MAX_ATTEMPTS:
                status = DeliveryStatus.DEAD
                _failed(delivery, number, t, status=status, next_attempt_at=None)
            else:
                status, retry_at = DeliveryStatus.PENDING, now + backoff(number)
                _failed(delivery, number, t, next_attempt_at=retry_at)
            statuses[delivery.pk] = status
            if status != DeliveryStatus.PENDING:
                events.append(_history_event(t, number, status))
        for status_code, pks in delivered.items():
            Delivery.objects.filter(pk__in=pks).update(
                attempts=F("attempts") + 1,
                last_status_code=status_code,
                last_error="",
                status=DeliveryStatus.DELIVERED,
                delivered_at=now,
                next_attempt_at=None,
                claim=None,
            )
        if rest:
            Delivery.objects.filter(pk__in=[d.pk for d in rest]).update(next_attempt_at=retry_at or now, claim=None)
            statuses.update((d.pk, DeliveryStatus.PENDING) for d in rest)
        history.append_many(events)
    for t in tried:
        if t.error:
            logger.warning(
                "outbox: %s to %s failed (attempt %d%s): %s",
                t.delivery.event.message_id,
                t.delivery.endpoint.name,
                t.delivery.attempts + 1,
                ", dead" if statuses[t.delivery.pk] == DeliveryStatus.DEAD else "",
                t.error,
            )
    return statuses


def _failed(delivery: Delivery, number: int, tried: _Tried, **fields) -> None:
    Delivery.objects.filter(pk=delivery.pk).update(
        attempts=number, last_status_code=tried.status_code, last_error=tried.error, claim=None, **fields
    )


def _history_event(tried: _Tried, number: int, status: str) -> history.Event:
    delivery = tried.delivery
    payload = {
        "event": delivery.event.message_id,
        "type": delivery.event.type,
        "endpoint": delivery.endpoint.name,
        "attempt": number,
        "http_status": tried.status_code,
    }
    action = "outbox.delivered"
    if status == DeliveryStatus.DEAD:
        payload["error"] = tried.error[:500]
        action = "outbox.delivery_dead"
    return history.Event(
        "system", action, delivery._meta.label_lower, str(delivery.pk), delivery.event.site_id, payload
    )


def send_due(now: datetime | None = None, limit: int = 500) -> int:
    """Queue a send of every pending delivery whose time has come (every minute, in the task
    cluster): retries after their backoff, and first tries whose task was lost with the cluster."""
    now = now or timezone.now()
    due = list(
        Delivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=now)
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
    for pk in due:
        enqueue_on_commit("rmm.outbox.tasks.deliver", str(pk))
    return len(due)


STILL_PENDING = "The delivery is still pending: it is being sent."


def replay(delivery: Delivery, actor) -> Delivery:
    """Send a delivery again (a dead one, or a delivered one the receiver lost), with the same id
    and body; it gets ``RMM_WEBHOOK_MAX_ATTEMPTS`` more attempts."""
    with transaction.atomic():
        locked = Delivery.objects.select_for_update().select_related("event", "endpoint").get(pk=delivery.pk)
        if locked.status == DeliveryStatus.PENDING:
            raise OutboxError(STILL_PENDING)
        # Attempts go on counting; the limit applies to the attempts after the replay.
        Delivery.objects.filter(pk=locked.pk).update(
            status=DeliveryStatus.PENDING,
            next_attempt_at=timezone.now(),
            delivered_at=None,
            replayed_after=locked.attempts,
        )
        history.append(
            actor,
            "outbox.delivery_replayed",
            locked,
            site_id=locked.event.site_id,
            payload={"event": locked.event.message_id, "endpoint": locked.endpoint.name, "attempts": locked.attempts},
        )
        enqueue_on_commit("rmm.outbox.tasks.deliver", str(locked.pk))
    locked.refresh_from_db()
    return locked


def new_secret() -> str:
    """A fresh Standard Webhooks secret."""
    import base64
    import secrets

    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


# --- webhook subscriptions (docs/integrations.md) -------------------------------------------------

PING = "webhook.ping"
MAX_OVERLAP_HOURS = 24 * 30


def require_manager(user, action: str, endpoint: Endpoint | None = None) -> None:
    """Webhooks hear events across sites: only a role that manages integrations may touch them;
    a refusal is recorded."""
    if not access.can(user, "manage_integrations"):
        history.record_refusal(user, f"webhook.{action}", endpoint, reason="role may not manage webhooks")
        raise Forbidden("Your role may not manage webhooks.")


def visible_webhooks(user) -> QuerySet[Endpoint]:
    """The subscriptions a caller may see: with every site, all of them; otherwise those restricted
    to sites the caller may see, each of them (an unrestricted one hears every site). The PSA's
    endpoint is the settings', not the API's."""
    found = Endpoint.objects.exclude(name=PSA_ENDPOINT).prefetch_related("sites").order_by("-created_at")
    return within_sites(user, found)


def within_sites(user, found: QuerySet) -> QuerySet:
    """Of integrations restricted by a ``sites`` relation (webhooks, SIEM destinations), those a
    caller may see: all with every site; otherwise those restricted to sites that are all the
    caller's (an unrestricted one hears every site)."""
    if access.sees_all_sites(user):
        return found
    hidden = Site.objects.exclude(pk__in=access.visible_sites(user).values("pk"))
    with_sites = found.model.objects.filter(sites__isnull=False).values("pk")
    return found.filter(pk__in=with_sites).exclude(sites__in=hidden)


def site_names(integration) -> list[str]:
    """The sorted names of the sites a webhook or SIEM destination is restricted to (none: every
    site), from its prefetched ``sites``."""
    return sorted(site.name for site in integration.sites.all())


def visible_deliveries(user) -> QuerySet[Delivery]:
    """The deliveries of the subscriptions the caller may see."""
    return Delivery.objects.filter(endpoint__in=visible_webhooks(user).values("pk")).select_related("event", "endpoint")


def deliveries_of(endpoint: Endpoint) -> QuerySet[Delivery]:
    """A subscription's deliveries, newest first, with their events and every attempt."""
    return (
        Delivery.objects.filter(endpoint=endpoint)
        .select_related("event", "endpoint")
        .prefetch_related("attempt_log")
        .order_by("-created_at", "-pk")
    )


def site_list(user, names, what: str = "webhook", action: str = "webhook.sites") -> list[Site]:
    """The named sites, each one the caller may see; none named: every site, which needs them all
    (refused as ``refused.<action>``)."""
    names = list(dict.fromkeys(names or []))
    if not names:
        if not access.sees_all_sites(user):
            history.record_refusal(user, action, reason="every site needs access to every site")
            raise Forbidden(f"A {what} for every site needs access to every site; name your sites.")
        return []
    visible = {site.name: site for site in access.visible_sites(user).filter(name__in=names)}
    for name in names:
        if name not in visible:
            raise InvalidInput(f"No site named {name!r} that you may operate.", field="sites")
    return [visible[name] for name in names]


def _checked_types(names) -> list[str]:
    names = list(dict.fromkeys(names or []))
    if not names:
        raise InvalidInput("Name at least one event type.", field="event_types")
    for name in names:
        if name != EVERY_TYPE and name not in _types:
            known = ", ".join(sorted(_types))
            raise InvalidInput(f"Not a registered event type: {name!r}; registered: {known}.", field="event_types")
    return names


def _checked_url(url: str) -> str:
    url = (url or "").strip()
    reason = addresses.refusal(url) if url else "A URL is required."
    if reason:
        raise InvalidInput(reason, field="url")
    return url


def _described(endpoint: Endpoint, sites: list[Site]) -> dict:
    """A subscription as the history keeps it: never its secret."""
    return {
        "name": endpoint.name,
        "url": endpoint.url,
        "event_types": endpoint.event_types,
        "sites": [site.name for site in sites],
        "enabled": endpoint.enabled,
    }


def create_webhook(
    user, *, url: str, event_types: list[str], sites: list[str] | None = None, name: str = ""
) -> tuple[Endpoint, str]:
    """A new subscription and its secret, which is returned this once and shown never again."""
    require_manager(user, "create")
    url, event_types, site_rows = _checked_url(url), _checked_types(event_types), site_list(user, sites)
    name = (name or "").strip() or f"webhook-{uuid.uuid4().hex[:12]}"
    if name == PSA_ENDPOINT or Endpoint.objects.filter(name=name).exists():
        raise InvalidInput("An endpoint of that name exists already.", field="name")
    secret = new_secret()
    with transaction.atomic():
        endpoint = Endpoint.objects.create(
            name=name, url=url, secret=secret, event_types=event_types, enabled=True, created_by=user
        )
        endpoint.sites.set(site_rows)
        history.append(user, "webhook.created", endpoint, payload=_described(endpoint, site_rows))
    return endpoint, secret


def update_webhook(user, endpoint: Endpoint, **changes) -> Endpoint:
    """Change a subscription's ``url``, ``event_types``, ``sites`` or ``enabled``; each is checked as
    at creation. Events already written keep their deliveries."""
    require_manager(user, "change", endpoint)
    fields = {}
    if "url" in changes:
        fields["url"] = _checked_url(changes["url"])
    if "event_types" in changes:
        fields["event_types"] = _checked_types(changes["event_types"])
    if "enabled" in changes:
        fields["enabled"] = bool(changes["enabled"])
    site_rows = site_list(user, changes["sites"]) if "sites" in changes else list(endpoint.sites.all())
    with transaction.atomic():
        Endpoint.objects.filter(pk=endpoint.pk).update(**fields)
        if "sites" in changes:
            endpoint.sites.set(site_rows)
        endpoint.refresh_from_db()
        history.append(user, "webhook.changed", endpoint, payload=_described(endpoint, site_rows))
    return endpoint


def disable_webhook(user, endpoint: Endpoint) -> Endpoint:
    """Stop a subscription (kept with its deliveries; ``enabled`` brings it back)."""
    require_manager(user, "disable", endpoint)
    if not endpoint.enabled:
        raise Conflict("The webhook is disabled already.")
    return update_webhook(user, endpoint, enabled=False)


def rotate_secret(user, endpoint: Endpoint, overlap_hours: float | None = None) -> tuple[Endpoint, str]:
    """A new secret, returned this once. The one before keeps signing beside it for
    ``overlap_hours`` (``RMM_WEBHOOK_SECRET_OVERLAP_HOURS`` by default), so the receiver can
    switch without a request it cannot verify."""
    require_manager(user, "rotate_secret", endpoint)
    hours = settings.RMM_WEBHOOK_SECRET_OVERLAP_HOURS if overlap_hours is None else overlap_hours
    if not 0 <= hours <= MAX_OVERLAP_HOURS:
        raise InvalidInput(f"Must be between 0 and {MAX_OVERLAP_HOURS} hours.", field="overlap_hours")
    secret, until = new_secret(), timezone.now() + timedelta(hours=hours)
    with transaction.atomic():
        # One UPDATE, no SELECT … FOR UPDATE: that lock would conflict with the key-share lock every
        # delivery's insert takes on its endpoint, and so with an emission holding the history's lock.
        Endpoint.objects.filter(pk=endpoint.pk).update(
            previous_secret=F("secret"), secret=secret, previous_secret_expires_at=until
        )
        history.append(
            user, "webhook.secret_rotated", endpoint, payload={"name": endpoint.name, "previous_signs_until": until}
        )
    endpoint.refresh_from_db()
    return endpoint, secret


def ping(user, endpoint: Endpoint) -> Delivery:
    """A ``webhook.ping`` event for this endpoint alone, delivered (signed, retried) like any other."""
    require_manager(user, "ping", endpoint)
    if not endpoint.enabled:
        raise Conflict("The webhook is disabled: enable it to ping it.")
    event = Event(
        type=PING,
        subject_type=endpoint._meta.label_lower,
        subject_id=str(endpoint.pk),
        data={"webhook": str(endpoint.pk), "name": endpoint.name, "pinged_by": user.get_username()},
    )
    delivery = Delivery(event=event, endpoint=endpoint, next_attempt_at=timezone.now())
    with transaction.atomic():
        _write([event], [delivery])
        history.append(user, "webhook.pinged", endpoint, payload={"name": endpoint.name, "event": event.message_id})
    return delivery


def replay_refusal(delivery: Delivery) -> str | None:
    """Why a caller may not send a subscription's delivery again (its webhook is disabled, or it is
    being sent), or None."""
    if not delivery.endpoint.enabled:
        return "The webhook is disabled: enable it to replay its deliveries."
    if delivery.status == DeliveryStatus.PENDING:
        return STILL_PENDING
    return None


def replayable(delivery: Delivery) -> bool:
    """Whether :func:`replay_delivery` would send it again: the console offers *Send again* then alone."""
    return replay_refusal(delivery) is None


def replay_delivery(user, delivery: Delivery) -> Delivery:
    """:func:`replay` for a caller: a subscription's delivery, sent again with the same id and body."""
    require_manager(user, "replay", delivery.endpoint)
    reason = replay_refusal(delivery)
    if reason:
        raise Conflict(reason)
    try:  # the status again, under the row's lock
        return replay(delivery, user)
    except OutboxError as exc:
        raise Conflict(str(exc)) from None
