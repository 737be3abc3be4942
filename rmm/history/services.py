"""Appending to and verifying the execution history.

Every event's hash covers its content and the previous event's hash, so rewriting or
removing any event breaks every hash after it.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.utils import timezone

from rmm.core import bulk
from rmm.history.models import HistoryEvent
from rmm_agent.protocol import canonical_json

GENESIS_HASH = "0" * 64
_PG_LOCK_KEY = 0x524D4D48  # "RMMH": serialises appends across workers on PostgreSQL


@dataclass
class Event:
    actor: str
    action: str
    subject_type: str = ""
    subject_id: str = ""
    site_id: object | None = None
    payload: dict = field(default_factory=dict)


class Actor(str):
    """An actor's name that also carries the API token it acted through (``api_token``: the
    token's id), which every event it appends records in its payload."""

    api_token: str | None = None


def actor_of(user_or_agent) -> str:
    """A stable, readable actor name for people, service accounts, agents and the system.

    A user authenticated by an API token (rmm.authority.services.authenticate_token sets
    ``user.api_token``) acts as ``user:<name>`` through that token: its events name the token.
    """
    if user_or_agent is None:
        return "system"
    if isinstance(user_or_agent, str):
        return user_or_agent
    if hasattr(user_or_agent, "secret_hash"):
        return f"agent:{user_or_agent.pk}"
    token = getattr(user_or_agent, "api_token", None)
    if token is None:
        return f"user:{user_or_agent.get_username()}"
    name = Actor(f"user:{user_or_agent.get_username()}")
    name.api_token = str(token.pk)
    return name


def event_body(sequence: int, created_at, actor, action, subject_type, subject_id, site_id, payload) -> bytes:
    """The canonical JSON of an event's content: what its hash commits to."""
    return canonical_json(
        {
            "sequence": sequence,
            "created_at": created_at.isoformat(),
            "actor": actor,
            "action": action,
            "subject_type": subject_type,
            "subject_id": subject_id,
            "site_id": str(site_id) if site_id else None,
            "payload": payload,
        }
    )


def link_hash(prev_hash: str, body_sha256: str) -> str:
    """Version 2 of the chain: sha256(previous hash + sha256 of the body), both in hex.

    Chaining the body's digest rather than the body lets an export show an event of another
    site as its digest alone and still prove every link (evidence exports withhold them).
    """
    return hashlib.sha256((prev_hash + body_sha256).encode()).hexdigest()


def event_hash(prev_hash: str, sequence: int, created_at, actor, action, subject_type, subject_id, site_id, payload):
    body = event_body(sequence, created_at, actor, action, subject_type, subject_id, site_id, payload)
    return link_hash(prev_hash, hashlib.sha256(body).hexdigest())


def event_hash_v1(prev_hash: str, sequence: int, created_at, actor, action, subject_type, subject_id, site_id, payload):
    """Version 1, used before version 2: sha256(previous hash + body). Older events keep it."""
    body = event_body(sequence, created_at, actor, action, subject_type, subject_id, site_id, payload)
    return hashlib.sha256(prev_hash.encode() + body).hexdigest()


def _json_safe(payload: dict) -> dict:
    """Round-trip through canonical JSON so the stored payload hashes the same when read back."""
    return json.loads(json.dumps(payload, cls=DjangoJSONEncoder))


def lock() -> None:
    """Take the history's lock until the caller's transaction ends (call inside one).

    Every change that work depends on (a kill switch engaged, authority withdrawn, an agent
    revoked) appends its history in the transaction that makes it, so whoever holds this lock
    sees each of them either committed or not yet begun: a check made under it cannot miss one
    committing meanwhile. SQLite's IMMEDIATE transactions are serialised already.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_PG_LOCK_KEY])


# A row's values, in the order of HistoryEvent's concrete fields (COPY and the positional
# constructor both rely on it; a test compares them).
ROW = (
    "sequence",
    "created_at",
    "actor",
    "action",
    "subject_type",
    "subject_id",
    "site_id",
    "payload",
    "prev_hash",
    "hash",
)


_deferred: contextvars.ContextVar[list | None] = contextvars.ContextVar("history_deferred", default=None)


@contextlib.contextmanager
def deferred():
    """Appends made inside are made when it ends, together: one lock, one head read, one insert.

    The history's lock is held from an append to the commit, and every agent's lease and result
    waits for it; a service whose transaction appends several events (a result: the instruction's,
    the job's, its evidence's) wraps its work in ``with transaction.atomic(), history.deferred():``
    so that the lock is taken only at the end. An append inside returns no sequence number: pass
    ``then`` to :func:`append` for it. Work that takes the lock itself (:func:`at_end`) runs just
    before the append. A check that must see every change committed before it (a kill switch,
    withdrawn authority) takes :func:`lock` itself. An exception inside discards the appends with
    the transaction (so catch none inside: a savepoint rolled back inside keeps its appends);
    nested blocks append when the outermost ends.
    """
    if _deferred.get() is not None:
        yield
        return
    buffer: list = []
    hooks: list = []
    token = _deferred.set((buffer, hooks))
    try:
        yield
        for hook in hooks:  # still deferred: their appends join the one append
            hook()
    finally:
        _deferred.reset(token)
    if buffer:
        sequences = append_many(event for event, _ in buffer)
        for (_, then), sequence in zip(buffer, sequences, strict=True):
            if then is not None:
                then(sequence)


def at_end(work: Callable[[], None]) -> None:
    """Run ``work`` now, or, inside :func:`deferred`, at its end just before the append: work that
    takes the history's lock (to read what other transactions commit under it) then holds it no
    longer than the append does."""
    state = _deferred.get()
    if state is None:
        work()
    else:
        state[1].append(work)


def append_many(events: Iterable[Event]) -> list[int]:
    """Append events in order under one lock: one head read and one insert, whatever the count.
    Returns their sequence numbers (none inside :func:`deferred`, which appends them at its end).

    The lock is held until the caller's transaction ends, and every agent's lease and result
    waits for it: what does not depend on the chain's head is prepared before it is taken, and
    callers append last in their transactions.
    """
    state = _deferred.get()
    if state is not None:
        state[0].extend((event, None) for event in events)
        return []
    prepared = []
    for ev in events:
        site_id = str(ev.site_id) if ev.site_id else None
        subject_id = str(ev.subject_id)
        token = getattr(ev.actor, "api_token", None)
        payload = _payload_json({**ev.payload, "api_token": token} if token else ev.payload)
        # The canonical JSON of event_body, written out around the creation time and the
        # sequence (known under the lock only): keys in sorted order, the payload serialised once.
        before = f'{{"action":{_text(ev.action)},"actor":{_text(ev.actor)},"created_at":'
        middle = f',"payload":{payload},"sequence":'
        after = (
            f',"site_id":{_text(site_id)},"subject_id":{_text(subject_id)},"subject_type":{_text(ev.subject_type)}}}'
        )
        prepared.append((ev, site_id, subject_id, payload, before, middle, after))
    if not prepared:
        return []
    with transaction.atomic():
        lock()
        head = HistoryEvent.objects.order_by("-sequence").values_list("sequence", "hash").first()
        sequence, prev_hash = head if head else (0, GENESIS_HASH)
        now = timezone.now()
        stamp = _text(now.isoformat())
        rows = []
        for ev, site_id, subject_id, payload, before, middle, after in prepared:
            sequence += 1
            body = f"{before}{stamp}{middle}{sequence}{after}"
            digest = link_hash(prev_hash, hashlib.sha256(body.encode()).hexdigest())
            row = (sequence, now, ev.actor, ev.action, ev.subject_type, subject_id, site_id, payload, prev_hash, digest)
            rows.append(row)
            prev_hash = digest
        if connection.vendor == "postgresql":
            bulk.copy_rows(HistoryEvent, rows)  # COPY, the payload's JSON text as it was hashed
        else:
            HistoryEvent.objects.bulk_create(
                [HistoryEvent(*row[:7], json.loads(row[7]), *row[8:]) for row in rows], batch_size=2000
            )
    return [row[0] for row in rows]


def _text(value) -> str:
    return json.dumps(value, ensure_ascii=False)


_SCALARS = (str, int, float, bool, type(None))


def _payload_json(payload: dict) -> str:
    """A payload's canonical JSON as it reads back from the database (see :func:`_json_safe`).

    A flat payload of plain values with string keys (nearly all) is serialised once; anything
    else goes through a round trip first, which turns keys into strings before they are sorted.
    """
    if all(type(key) is str and isinstance(value, _SCALARS) for key, value in payload.items()):
        return canonical_json(payload).decode()
    return canonical_json(_json_safe(payload)).decode()


def append(
    actor,
    action: str,
    subject=None,
    *,
    site_id=None,
    payload: dict | None = None,
    subject_type: str = "",
    then: Callable[[int], None] | None = None,
) -> int | None:
    """Append one event; returns its sequence number (None inside :func:`deferred`). ``subject``
    is a model instance (type and id are taken from it). ``then`` is called with the sequence
    number once the event is appended (at once, or when the deferred block ends)."""
    subject_id = ""
    if subject is not None:
        subject_type = subject_type or subject._meta.label_lower
        subject_id = str(subject.pk)
    event = Event(actor_of(actor), action, subject_type, subject_id, site_id, payload or {})
    state = _deferred.get()
    if state is not None:
        state[0].append((event, then))
        return None
    sequence = append_many([event])[0]
    if then is not None:
        then(sequence)
    return sequence


def record_refusal(actor, action: str, subject=None, *, reason: str, site_id=None, payload: dict | None = None):
    """A refusal is evidence too. Call it outside the caller's transaction (services check before
    they open one), so that the refusal commits even though the refused work never happens."""
    data = dict(payload or {})
    data["reason"] = reason
    return append(actor, f"refused.{action}", subject, site_id=site_id, payload=data)


class Refused(Exception):
    """A check made inside the transaction that would do the work (under :func:`lock`) failed:
    :func:`refusals_recorded` records it once that transaction has rolled back, then raises
    ``error`` (the service's own InvalidInput, Forbidden or Conflict)."""

    def __init__(self, error: Exception, actor, action: str, subject=None, **refusal) -> None:
        super().__init__(str(error))
        self.error, self.actor, self.action, self.subject, self.refusal = error, actor, action, subject, refusal


@contextlib.contextmanager
def refusals_recorded():
    """Wrap a transaction (``with refusals_recorded(), transaction.atomic():``) whose checks raise
    :class:`Refused`: the refusal is appended after the rollback, so it stays."""
    try:
        yield
    except Refused as refused:
        record_refusal(refused.actor, refused.action, refused.subject, **refused.refusal)
        raise refused.error from None


@dataclass
class VerifyReport:
    checked: int
    ok: bool
    first_bad: int | None = None
    problem: str = ""


def iter_events(batch: int = 2000) -> Iterator[HistoryEvent]:
    last = 0
    while True:
        chunk = list(HistoryEvent.objects.filter(sequence__gt=last).order_by("sequence")[:batch])
        if not chunk:
            return
        yield from chunk
        last = chunk[-1].sequence


def verify_chain(anchored: Mapping[int, list[tuple[str, str]]] | None = None) -> VerifyReport:
    """Walk the chain from the genesis hash; name the first event that does not verify.

    ``anchored`` maps a sequence to the (hash, label) of signed anchors kept outside the
    database: a rebuilt chain no longer has the anchored hash there, and a chain cut short no
    longer reaches the newest anchored sequence.
    """
    anchored = anchored or {}
    version_2 = False
    prev_hash = GENESIS_HASH
    expected_seq = 1
    checked = 0
    for ev in iter_events():
        if ev.sequence != expected_seq:
            return VerifyReport(checked, False, expected_seq, f"event {expected_seq} is missing")
        if ev.prev_hash != prev_hash:
            return VerifyReport(checked, False, ev.sequence, "previous hash does not match the chain")
        fields = (
            ev.prev_hash,
            ev.sequence,
            ev.created_at,
            ev.actor,
            ev.action,
            ev.subject_type,
            ev.subject_id,
            ev.site_id,
            ev.payload,
        )
        if event_hash(*fields) == ev.hash:
            version_2 = True
        elif version_2 or event_hash_v1(*fields) != ev.hash:  # version 1 only before any version 2 event
            return VerifyReport(checked, False, ev.sequence, "content does not match its hash")
        for anchored_hash, label in anchored.get(ev.sequence, ()):
            if anchored_hash != ev.hash:
                return VerifyReport(checked, False, ev.sequence, f"its hash does not match {label}")
        prev_hash = ev.hash
        expected_seq += 1
        checked += 1
    if anchored and max(anchored) >= expected_seq:
        newest = max(anchored)
        return VerifyReport(
            checked,
            False,
            expected_seq,
            f"the chain ends at event {expected_seq - 1}, but {anchored[newest][-1][1]} covers event {newest}",
        )
    return VerifyReport(checked, True)
