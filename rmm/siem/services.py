"""The SIEM feed (docs/integrations.md#the-siem-feed): every history event goes to each enabled
destination in chain order, at least once.

A destination keeps a cursor, the last history sequence it acknowledged. :func:`ship` reads the
events after it in chain order, sends them in batches and moves the cursor only once the collector
took a batch; a failure keeps the cursor where it was, and the next attempt (after a backoff) sends
the same events again, so an outage loses nothing and the feed resumes in order. The feed reads the
history; appending to the history does nothing for it (the agents' hot path stays as it was).
History sequences are assigned and committed in order under the history's lock, so no event can
appear later behind a cursor. One worker ships a destination at a time (a lease on its row).
"""

from __future__ import annotations

import logging
import ssl
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Min, Q, QuerySet
from django.utils import timezone

from rmm.access import roles as access
from rmm.core.errors import Conflict, Forbidden, InvalidInput
from rmm.history import services as history
from rmm.history.models import HistoryEvent
from rmm.inventory.models import Site
from rmm.outbox import services as outbox
from rmm.siem import transport
from rmm.siem.models import Destination, Follower, Format, Kind, Shape

logger = logging.getLogger("rmm.siem")

LEASE_SECONDS = 60
MAX_BACKOFF_SECONDS = 300


# --- who may, and what they see ------------------------------------------------------------------


def require_manager(user, action: str, destination: Destination | None = None) -> None:
    """The feed carries every event of its sites: only a role that manages integrations may touch
    destinations; a refusal is recorded."""
    if not access.can(user, "manage_integrations"):
        history.record_refusal(user, f"siem.{action}", destination, reason="role may not manage SIEM destinations")
        raise Forbidden("Your role may not manage SIEM destinations.")


def visible_destinations(user) -> QuerySet[Destination]:
    """As webhooks: with every site, all; otherwise those restricted to sites all the caller's."""
    return outbox.within_sites(user, Destination.objects.prefetch_related("sites").order_by("-created_at"))


def head() -> int:
    """The history's newest sequence (0 when it is empty)."""
    return HistoryEvent.objects.order_by("-sequence").values_list("sequence", flat=True).first() or 0


@dataclass(frozen=True)
class Lag:
    events: int  # history events after the cursor that it is sent (of its sites, for a restricted one)
    seconds: float  # the age of the oldest of them; 0 when caught up


def lag(destination: Destination, newest: int | None = None, now: datetime | None = None) -> Lag:
    return lags([destination], newest, now)[destination.pk]


def lags(destinations: list[Destination], newest: int | None = None, now: datetime | None = None) -> dict:
    """Each destination's :class:`Lag` by its id, counting the events :func:`ship` would send it (a
    restricted one's of its sites alone: another site's history is not its caller's to know), in
    at most three queries whatever their number (a page, its sites prefetched)."""
    newest = head() if newest is None else newest
    now = now or timezone.now()
    found = {destination.pk: Lag(0, 0.0) for destination in destinations}
    every, restricted = [], []
    for destination in destinations:
        site_ids = [site.pk for site in destination.sites.all()]
        if destination.cursor >= newest:
            continue
        if site_ids:
            restricted.append((destination, site_ids))
        else:
            every.append(destination)
    if every:  # sequences are dense: the count is a subtraction, the age the next event's
        behind = [destination.cursor + 1 for destination in every]
        oldest = dict(HistoryEvent.objects.filter(sequence__in=behind).values_list("sequence", "created_at"))
        for destination in every:
            found[destination.pk] = _lag(newest - destination.cursor, oldest.get(destination.cursor + 1), now)
    if restricted:
        counts = {}
        for n, (destination, site_ids) in enumerate(restricted):
            theirs = Q(sequence__gt=destination.cursor, site_id__in=site_ids)
            counts[f"events_{n}"] = Count("sequence", filter=theirs)
            counts[f"oldest_{n}"] = Min("created_at", filter=theirs)
        counted = HistoryEvent.objects.filter(
            sequence__gt=min(destination.cursor for destination, _ in restricted),
            sequence__lte=newest,
            site_id__in={site_id for _, site_ids in restricted for site_id in site_ids},
        ).aggregate(**counts)
        for n, (destination, _) in enumerate(restricted):
            found[destination.pk] = _lag(counted[f"events_{n}"], counted[f"oldest_{n}"], now)
    return found


def _lag(events: int, first: datetime | None, now: datetime) -> Lag:
    age = (now - first).total_seconds() if events and first else 0.0
    return Lag(events, max(age, 0.0))


def state(destination: Destination) -> str:
    """``disabled``, ``failing`` (failed since its last delivery), ``delivering`` (delivered
    before), or ``new`` (nothing sent yet)."""
    if not destination.enabled:
        return "disabled"
    if destination.failures:
        return "failing"
    return "delivering" if destination.delivered_at else "new"


# --- making and removing -------------------------------------------------------------------------


def _checked(kind, address, fmt, tls, shape, token, ca_certificate) -> tuple[str, bool, str]:
    """The destination's fields, checked: 400 on the field that is wrong, with why."""
    if kind not in Kind.values:
        raise InvalidInput(f"Must be one of {', '.join(Kind.values)}.", field="kind")
    if fmt not in Format.values:
        raise InvalidInput(f"Must be one of {', '.join(Format.values)}.", field="format")
    address = (address or "").strip()
    if not address:
        raise InvalidInput("An address is required.", field="address")
    if kind == Kind.HTTP:
        if shape not in Shape.values:
            raise InvalidInput(f"An http destination needs one of {', '.join(Shape.values)}.", field="shape")
        if shape == Shape.SPLUNK_HEC and not token:
            raise InvalidInput("Splunk HEC needs its token.", field="token")
        if tls is None:
            tls = address.lower().startswith("https://")
    else:
        if shape or token:
            raise InvalidInput("Only http destinations take a shape and a token.", field="shape" if shape else "token")
        tls = bool(tls)
    reason = transport.refusal(kind, address, tls)
    if reason:
        raise InvalidInput(reason, field="address")
    if token and not all(33 <= ord(ch) <= 126 for ch in token):
        raise InvalidInput("Must be printable ASCII without spaces.", field="token")
    if ca_certificate:
        if not tls:
            raise InvalidInput("A CA certificate is for TLS; set tls.", field="ca_certificate")
        try:
            ssl.create_default_context(cadata=ca_certificate)
        except (ssl.SSLError, ValueError, TypeError) as exc:
            raise InvalidInput(f"Not a PEM CA certificate: {exc}", field="ca_certificate") from None
    return address, tls, shape or ""


def described(destination: Destination, sites: list[Site]) -> dict:
    """A destination as the history keeps it: never its token."""
    return {
        "name": destination.name,
        "kind": destination.kind,
        "address": destination.address,
        "format": destination.format,
        "tls": destination.tls,
        "shape": destination.shape,
        "sites": [site.name for site in sites],
        "starts_after": destination.cursor,
    }


def create_destination(
    user,
    *,
    kind: str,
    address: str,
    format: str = Format.JSON,  # noqa: A002 - the API's field name
    tls: bool | None = None,
    shape: str = "",
    token: str = "",
    index: str = "",
    ca_certificate: str = "",
    sites: list[str] | None = None,
    name: str = "",
    from_start: bool = False,
) -> Destination:
    """A destination that receives every event appended from now on (its own creation first), or
    the whole history with ``from_start``."""
    require_manager(user, "create")
    address, tls, shape = _checked(kind, address, format, tls, shape, token, ca_certificate)
    site_rows = outbox.site_list(user, sites, "destination", "siem.sites")
    name = (name or "").strip() or f"siem-{uuid.uuid4().hex[:12]}"
    if Destination.objects.filter(name=name).exists():
        raise InvalidInput("A destination of that name exists already.", field="name")
    with transaction.atomic():
        history.lock()  # the head read is the cursor: no event may commit in between
        destination = Destination.objects.create(
            name=name,
            kind=kind,
            address=address,
            format=format,
            tls=tls,
            shape=shape,
            token=token,
            index=index,
            ca_certificate=ca_certificate,
            cursor=0 if from_start else head(),
            created_by=user,
        )
        destination.sites.set(site_rows)
        history.append(user, "siem.destination_created", destination, payload=described(destination, site_rows))
    return destination


def set_enabled(user, destination: Destination, enabled: bool) -> Destination:
    """Pause a destination (it keeps its position) or resume it, from where it stopped."""
    require_manager(user, "partial_update", destination)
    if destination.enabled == enabled:
        raise Conflict(f"The destination is {'enabled' if enabled else 'disabled'} already.")
    with transaction.atomic():
        Destination.objects.filter(pk=destination.pk).update(enabled=enabled, next_attempt_at=None)
        history.append(
            user,
            "siem.destination_enabled" if enabled else "siem.destination_disabled",
            destination,
            payload={"name": destination.name, "position": destination.cursor},
        )
    destination.refresh_from_db()
    return destination


def delete_destination(user, destination: Destination) -> None:
    """Stop the feed to a destination and forget it (the history keeps that it existed)."""
    require_manager(user, "destroy", destination)
    sites = list(destination.sites.all())
    with transaction.atomic():
        history.append(user, "siem.destination_deleted", destination, payload=described(destination, sites))
        destination.delete()


# --- shipping ------------------------------------------------------------------------------------


def backoff(failures: int) -> timedelta:
    """Doubling from ``RMM_SIEM_RETRY_BASE_SECONDS``, at most five minutes: a collector back up is
    fed again soon."""
    return timedelta(seconds=min(settings.RMM_SIEM_RETRY_BASE_SECONDS * 2 ** (failures - 1), MAX_BACKOFF_SECONDS))


def _claim(pk, now: datetime) -> bool:
    free = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
    due = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    return bool(
        Destination.objects.filter(free & due, pk=pk, enabled=True).update(
            lease_until=now + timedelta(seconds=LEASE_SECONDS)
        )
    )


def _next_events(destination: Destination, site_ids: list, batch: int) -> tuple[list[HistoryEvent], int]:
    """The next events after the cursor in chain order, and where the cursor may go once they are
    delivered: past the last of them, or (fewer than a batch) to the head read before them, since
    the events in between are not this destination's."""
    newest = head()
    rows = HistoryEvent.objects.filter(sequence__gt=destination.cursor, sequence__lte=newest).order_by("sequence")
    if site_ids:
        rows = rows.filter(site_id__in=site_ids)
    events = list(rows[:batch])
    if len(events) == batch:
        return events, events[-1].sequence
    return events, newest


@dataclass
class Shipped:
    sent: int = 0
    batches: int = 0
    error: str = ""


def ship(destination_id, *, budget_seconds: float | None = None, now: datetime | None = None) -> Shipped:
    """Send a destination what it has not acknowledged, batch after batch, until it is caught up,
    a batch fails, or ``budget_seconds`` passed; nothing when another worker holds it or it is
    not due (backing off after a failure)."""
    done = Shipped()
    if not _claim(destination_id, now or timezone.now()):
        return done
    budget = settings.RMM_SIEM_SHIP_SECONDS if budget_seconds is None else budget_seconds
    deadline = time.monotonic() + budget
    try:
        destination = Destination.objects.filter(pk=destination_id).first()
        if destination is None:  # deleted meanwhile
            return done
        site_ids = list(destination.sites.values_list("pk", flat=True))
        while True:
            events, cursor = _next_events(destination, site_ids, settings.RMM_SIEM_BATCH)
            if cursor == destination.cursor:
                return done
            attempt_at = timezone.now()
            try:
                if events:
                    transport.send(destination, events)
            except transport.DeliveryError as exc:
                done.error = str(exc)[:2000]
                _failed(destination, attempt_at, done.error)
                return done
            _delivered(destination, attempt_at, cursor, bool(events))
            done.sent += len(events)
            done.batches += 1
            if time.monotonic() > deadline:
                return done
            Destination.objects.filter(pk=destination.pk).update(
                lease_until=timezone.now() + timedelta(seconds=LEASE_SECONDS)
            )
    finally:
        Destination.objects.filter(pk=destination_id).update(lease_until=None)


def _delivered(destination: Destination, at: datetime, cursor: int, sent: bool) -> None:
    """Move the cursor; a destination that was failing records that it resumed."""
    fields = {"cursor": cursor, "last_attempt_at": at, "next_attempt_at": None, "failures": 0, "last_error": ""}
    if sent:
        fields["delivered_at"] = timezone.now()
    with transaction.atomic():
        Destination.objects.filter(pk=destination.pk).update(**fields)
        if destination.failures:
            history.append(
                "system",
                "siem.resumed",
                destination,
                payload={"name": destination.name, "failures": destination.failures, "cursor": cursor},
            )
    for key, value in fields.items():
        setattr(destination, key, value)


def _failed(destination: Destination, at: datetime, error: str) -> None:
    """Keep the cursor; try again after a backoff. The first failure after a delivery is recorded
    in the history (once, not at every retry: the feed would carry its own retries) and logged."""
    failures = destination.failures + 1
    with transaction.atomic():
        Destination.objects.filter(pk=destination.pk).update(
            failures=failures, last_error=error, last_attempt_at=at, next_attempt_at=timezone.now() + backoff(failures)
        )
        if failures == 1:
            history.append(
                "system",
                "siem.failing",
                destination,
                payload={"name": destination.name, "cursor": destination.cursor, "error": error[:500]},
            )
    logger.warning(
        "siem: %s failed (%d in a row), cursor %d: %s", destination.name, failures, destination.cursor, error
    )


def ship_due(budget_seconds: float | None = None) -> int:
    """Ship every enabled destination that is due; how many events were sent."""
    pks = list(Destination.objects.filter(enabled=True).values_list("pk", flat=True))
    return sum(ship(pk, budget_seconds=budget_seconds).sent for pk in pks)


def _take_over() -> int:
    """Become the newest follow run; its generation."""
    with transaction.atomic():
        Follower.objects.get_or_create(pk=1)
        Follower.objects.filter(pk=1).update(generation=F("generation") + 1, started_at=timezone.now())
        return Follower.objects.values_list("generation", flat=True).get(pk=1)


def _superseded(generation: int) -> bool:
    return not Follower.objects.filter(pk=1, generation=generation).exists()


def follow(seconds: float | None = None) -> int:
    """Ship what is due, then look again every ``RMM_SIEM_POLL_SECONDS``, until the next run of
    this task takes over or ``seconds`` (``RMM_SIEM_FOLLOW_SECONDS``) passed. The task cluster
    starts it every minute and each run follows longer than a minute, so a record leaves within
    about a poll of its event being appended, whenever that is. It returns at once when there is
    no destination."""
    seconds = settings.RMM_SIEM_FOLLOW_SECONDS if seconds is None else seconds
    deadline = time.monotonic() + seconds
    sent, generation = 0, None
    while True:
        if not Destination.objects.filter(enabled=True).exists():
            return sent
        if generation is None:
            generation = _take_over()
        elif _superseded(generation):
            return sent
        sent += ship_due(budget_seconds=max(deadline - time.monotonic(), 0))
        if time.monotonic() + settings.RMM_SIEM_POLL_SECONDS > deadline:
            return sent
        time.sleep(settings.RMM_SIEM_POLL_SECONDS)
