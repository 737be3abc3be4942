"""History anchors: the head of the chain (sequence, hash, time) signed with the server's
evidence key (:mod:`rmm.keys`, purpose ``evidence``; its key id is in the anchor) and kept as a
``history_anchor`` evidence blob, outside the database.

The chain alone proves that no event was changed or removed *before* its head; anyone with
database rights can still cut the newest events off, or rebuild the whole chain. An anchor
cannot be rewritten without the signing key, so ``verify_history`` checks the chain against
every anchor in the evidence store: a rebuilt event no longer has the anchored hash, and a
truncated tail no longer reaches the newest anchored sequence.

An anchor is written in two steps: its file first, then its record (an evidence row and its
history event). A process that dies between them leaves a file without a record, which an
object-locked store will not let anyone remove. Such a file is recognised for what it is: signed
by the server's key, naming an event whose hash it matches, and claimed by no history event. It
is not reported as tampering; the next anchor run records it (``history.anchor_recovered``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from rmm.history import services as history
from rmm.history.models import HistoryEvent
from rmm.keys import keyset
from rmm_agent import keyring
from rmm_agent.protocol import canonical_json

PURPOSE = "rmm.history_anchor"  # signed with the statement, so no other signed thing passes for an anchor
ANCHORED = "history.anchored"
RECOVERED = "history.anchor_recovered"  # an anchor whose run stopped before recording it, recorded later


def key_fingerprint(raw_public_key: bytes) -> str:
    """What an auditor compares with the fingerprint obtained out of band."""
    return keyring.fingerprint(raw_public_key)


def server_public_key() -> bytes:
    """The evidence key that signs anchors and export bundles now."""
    return keyset.current().signer(keyset.EVIDENCE).public_key


def trusted_keys() -> dict[str, bytes]:
    """Every evidence key, by id, whose signatures are this server's (the current one and those
    it succeeded, linked by signed rotation statements): anchors signed before a rotation verify."""
    return keyset.current().verification_keys(keyset.EVIDENCE)


@dataclass
class Anchor:
    name: str
    sequence: int
    hash: str
    time: str
    key_id: str = ""

    @property
    def label(self) -> str:
        return f"anchor {self.name} (signed {self.time})"


class AnchorProblem(Exception):
    pass


def statement(sequence: int, digest: str, time: str) -> dict:
    return {"purpose": PURPOSE, "sequence": sequence, "hash": digest, "time": time}


def anchor_history(actor="system", *, only_if_changed: bool = False):
    """Sign the current head and store it as a history_anchor record; its own history event
    comes after the head it anchors. With ``only_if_changed`` (the schedule), a head that is
    itself the previous anchor's event is not anchored again. Anchor files an earlier run left
    unrecorded are recorded first."""
    from evidence import services as evidence

    record_unrecorded(actor)
    head = HistoryEvent.objects.order_by("-sequence").values_list("sequence", "hash", "action").first()
    if head is None:
        return None
    sequence, digest, action = head
    if only_if_changed and action == ANCHORED:
        return None
    signed = statement(sequence, digest, timezone.now().isoformat())
    keys = keyset.current()
    signer = keys.signer(keyset.EVIDENCE)
    blob = canonical_json(
        {
            "anchor": signed,
            "key_id": signer.key_id,
            "signature": keys.sign_with(signer, canonical_json(signed)),
            "public_key": signer.public_key_b64,
            "key_fingerprint": signer.fingerprint,
        }
    )
    blob_hash = hashlib.sha256(blob).hexdigest()
    name = evidence.anchor_name(sequence, blob_hash)
    evidence.put_blob(name, blob, blob_hash)  # the file first: a record never points at nothing
    return _record(name, Anchor(name, sequence, digest, signed["time"]), blob_hash, actor, ANCHORED)


def _record(name: str, anchor: Anchor, blob_hash: str, actor, action: str):
    """The anchor's evidence record and its history event, once: under the history's lock, a
    record another run made meanwhile (for a file it found unrecorded) is returned instead."""
    from evidence import services as evidence
    from evidence.models import RmmEvidence
    from evidence.types import HISTORY_ANCHOR

    with transaction.atomic():
        history.lock()
        existing = RmmEvidence.objects.filter(evidence_type=HISTORY_ANCHOR, hash=blob_hash).first()
        if existing is not None:
            return existing
        return evidence.record(
            asset=None,
            evidence_type=HISTORY_ANCHOR,
            related_entity="history_event",
            related_id=uuid.UUID(int=anchor.sequence),  # the anchored sequence, as the record's related id
            actor=actor,
            action=action,
            payload={"sequence": anchor.sequence, "anchored_hash": anchor.hash, "time": anchor.time},
            stored=(blob_hash, f"{evidence.store_label()}/{name}"),
        )


def record_unrecorded(actor="system") -> list:
    """Record every anchor file left without its record by a run that stopped between the two
    writes (:func:`unrecorded_anchors`); the new records."""
    return [_record(anchor.name, anchor, blob_hash, actor, RECOVERED) for anchor, blob_hash in unrecorded_anchors()]


def parse_anchor(name: str, data: bytes, trusted: Mapping[str, bytes]) -> Anchor:
    """Check one anchor blob: its name's hash, its shape, its key (by id, one of ``trusted``) and
    its signature."""
    filename = name.rsplit("/", 1)[-1]
    if not filename.endswith(f"-{hashlib.sha256(data).hexdigest()}.json"):
        raise AnchorProblem("its content does not match the hash in its name")
    try:
        doc = json.loads(data)
        signed = doc["anchor"]
        sequence, digest, time = signed["sequence"], signed["hash"], signed["time"]
        key = base64.b64decode(doc["public_key"], validate=True)
        kid = doc.get("key_id", keyring.key_id(key))  # anchors from before key ids name only their key
    except (ValueError, KeyError, TypeError, AttributeError):
        raise AnchorProblem("it is not a well-formed anchor") from None
    if set(signed) != {"purpose", "sequence", "hash", "time"} or signed["purpose"] != PURPOSE:
        raise AnchorProblem("it is not a well-formed anchor")
    if not isinstance(kid, str) or trusted.get(kid) != key:
        raise AnchorProblem(f"it is signed by another key ({key_fingerprint(key)})")
    if not keyring.verify(trusted[kid], canonical_json(signed), doc.get("signature")):
        raise AnchorProblem("its signature does not verify")
    if not filename.startswith(f"{sequence:012d}-"):
        raise AnchorProblem("its name does not match the sequence it signs")
    return Anchor(name=name, sequence=sequence, hash=digest, time=time, key_id=kid)


def stored_anchor_names() -> list[str]:
    from evidence.services import ANCHOR_DIR

    try:
        _dirs, files = default_storage.listdir(ANCHOR_DIR)
    except FileNotFoundError:
        return []
    return sorted(f"{ANCHOR_DIR}/{name}" for name in files if name.endswith(".json"))


@dataclass
class HistoryReport:
    chain: history.VerifyReport
    anchors: list[Anchor] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # anchors that are themselves wrong
    unrecorded: list[Anchor] = field(default_factory=list)  # left by a run that stopped; recorded next run

    @property
    def ok(self) -> bool:
        return self.chain.ok and not self.problems


def _recorded_names() -> dict[str, object]:
    """The store names of the anchors that have an evidence record, with the record's id."""
    from evidence import services as evidence
    from evidence.models import RmmEvidence
    from evidence.types import HISTORY_ANCHOR

    rows = RmmEvidence.objects.filter(evidence_type=HISTORY_ANCHOR).only("id", "hash", "storage_uri", "evidence_type")
    return {evidence.storage_name(row): row.pk for row in rows}


def _left_by_a_stopped_run(anchor: Anchor, blob_hash: str) -> bool:
    """An anchor file without a record is one its run wrote and then could not record when the
    event it signs is in the chain with the hash it signs, and no history event claims it (the
    record and its event are written together, so a record deleted later leaves its event)."""
    if not HistoryEvent.objects.filter(sequence=anchor.sequence, hash=anchor.hash).exists():
        return False
    return not HistoryEvent.objects.filter(
        sequence__gt=anchor.sequence, action__in=(ANCHORED, RECOVERED), payload__hash=blob_hash
    ).exists()


def _read(name: str) -> bytes:
    with default_storage.open(name, "rb") as fh:
        return fh.read()


def unrecorded_anchors() -> list[tuple[Anchor, str]]:
    """Anchor files in the store that a run wrote but did not record (its process died between
    the two writes), each with its blob's sha256. Files without a record that are not
    recognised as such are left to ``verify_history``, which reports them."""
    names = set(stored_anchor_names()) - set(_recorded_names())
    found = []
    trusted = trusted_keys()
    for name in sorted(names):
        data = _read(name)
        try:
            anchor = parse_anchor(name, data, trusted)
        except AnchorProblem:
            continue
        blob_hash = hashlib.sha256(data).hexdigest()
        if _left_by_a_stopped_run(anchor, blob_hash):
            found.append((anchor, blob_hash))
    return found


def load_anchors() -> tuple[list[Anchor], list[str], list[Anchor]]:
    """Every anchor in the evidence store (the listing, not the database, is the source), the
    problems found (bad anchors, anchors without records, records without anchors), and the
    anchors a stopped run left unrecorded, which are not problems."""
    trusted = trusted_keys()
    anchors, problems, unrecorded = [], [], []
    names = stored_anchor_names()
    recorded = _recorded_names()
    for name, pk in recorded.items():
        if name not in names:
            problems.append(f"anchor {name}: its evidence record {pk} exists but the blob is missing from the store")
    for name in names:
        data = _read(name)
        try:
            anchor = parse_anchor(name, data, trusted)
        except AnchorProblem as exc:
            problems.append(f"anchor {name}: {exc}")
            anchor = None
        else:
            anchors.append(anchor)
        if name in recorded:
            continue
        if anchor is not None and _left_by_a_stopped_run(anchor, hashlib.sha256(data).hexdigest()):
            unrecorded.append(anchor)
        else:
            problems.append(f"anchor {name}: it has no evidence record (deleted from the database?)")
    return anchors, problems, unrecorded


def verify_history() -> HistoryReport:
    """Walk the chain from genesis, checking it against every stored anchor."""
    anchors, problems, unrecorded = load_anchors()
    expected: dict[int, list[tuple[str, str]]] = {}
    for anchor in anchors:
        expected.setdefault(anchor.sequence, []).append((anchor.hash, anchor.label))
    return HistoryReport(
        chain=history.verify_chain(expected), anchors=anchors, problems=problems, unrecorded=unrecorded
    )
