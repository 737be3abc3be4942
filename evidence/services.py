"""Evidence: blobs stored by their sha256 in the core's blob store (rmm/blobs.py), records that
point at them, and legal holds. The only place that writes evidence (retention lives in retention.py,
exports in exports.py)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections.abc import Iterator

from django.core.files.storage import default_storage
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from evidence import types
from evidence.models import LegalHold, RmmEvidence
from rmm.access import roles as access
from rmm.authority.models import PsaCase, PsaTask
from rmm.core import blobs
from rmm.core.errors import Conflict, Forbidden, InvalidInput
from rmm.history import services as history
from rmm_agent.protocol import canonical_json

BLOB_DIR = "evidence"
ANCHOR_DIR = "evidence/anchors"
CHUNK = blobs.CHUNK


# --- where blobs live -------------------------------------------------------------------------
# In the core's content-addressed store (rmm/blobs.py), under evidence/ (anchors under
# evidence/anchors/); these name evidence's places in it.


store_label = blobs.store_label  # what every storage_uri starts with


def blob_name(digest: str, extension: str = "json") -> str:
    return blobs.content_name(BLOB_DIR, digest, extension)


def anchor_name(sequence: int, digest: str) -> str:
    """Anchors sort by the sequence they sign, so that a listing of the store finds the newest."""
    return f"{ANCHOR_DIR}/{sequence:012d}-{digest}.json"


def storage_name(row: RmmEvidence) -> str:
    """Where the blob is in the configured store. Derived from the hash, not trusted from the URI:
    the URI says where the blob was first written, and a store can be copied elsewhere."""
    filename = row.storage_uri.rsplit("/", 1)[-1]
    if row.hash not in filename:
        raise Conflict("The evidence record's storage URI does not name its hash.")
    if row.evidence_type == types.HISTORY_ANCHOR:
        return f"{ANCHOR_DIR}/{filename}"
    return f"{BLOB_DIR}/{row.hash[:2]}/{filename}"


def blob_extension(row: RmmEvidence) -> str:
    filename = row.storage_uri.rsplit("/", 1)[-1]
    return filename.rsplit(".", 1)[-1] if "." in filename else "bin"


def put_blob(name: str, data: bytes, digest: str) -> None:
    """Write ``data`` at ``name`` once (:func:`rmm.core.blobs.put`); altered bytes there are refused
    and recorded as ``refused.evidence.store``."""
    blobs.put(name, data, digest, action="evidence.store")


def store_blob(data: bytes, extension: str = "json") -> tuple[str, str]:
    """Store ``data`` under its own hash: (sha256, storage_uri)."""
    return blobs.store(data, folder=BLOB_DIR, extension=extension, action="evidence.store")


# --- recording --------------------------------------------------------------------------------


def document_bytes(document: dict) -> bytes:
    return canonical_json(json.loads(json.dumps(document, cls=DjangoJSONEncoder)))


def of_job(job_id) -> list[dict]:
    """The evidence of one job, oldest first: what ``job.finished`` tells the PSA of it."""
    rows = RmmEvidence.objects.filter(related_id=job_id).order_by("captured_at")
    return [{"id": str(e.pk), "type": e.evidence_type, "hash": e.hash} for e in rows]


ASSET_PANEL_ROWS = 20


def newest_of_asset(asset, user) -> list[RmmEvidence]:
    """The console's evidence panel on an asset's page: its newest records the user may see."""
    rows = visible_evidence(user).filter(asset=asset).order_by("-captured_at", "id")
    return list(rows[:ASSET_PANEL_ROWS])


def record(
    *,
    asset,
    evidence_type: str,
    related_entity: str,
    related_id,
    document: dict | None = None,
    content: bytes | None = None,
    extension: str = "json",
    site_id=None,
    psa_case_id=None,
    psa_task_id=None,
    actor="system",
    action: str = "evidence.recorded",
    payload: dict | None = None,
    stored: tuple[str, str] | None = None,
) -> RmmEvidence:
    """Write the blob, then the record and its history event together.

    The record keeps the sequence of that event, so an export can prove the item through the
    chain. A blob whose record then rolls back stays in the store unreferenced, which is harmless.
    """
    return record_many(
        [
            {
                "asset": asset,
                "evidence_type": evidence_type,
                "related_entity": related_entity,
                "related_id": related_id,
                "document": document,
                "content": content,
                "extension": extension,
                "site_id": site_id,
                "psa_case_id": psa_case_id,
                "psa_task_id": psa_task_id,
                "actor": actor,
                "action": action,
                "payload": payload,
                "stored": stored,
            }
        ]
    )[0]


def record_many(items: list[dict]) -> list[RmmEvidence]:
    """:func:`record` for many pieces of evidence at once (each a dict of its arguments): each blob
    written, then the records in one insert once their events have their sequence numbers (at
    once, or when the caller's deferred appends end). The results an agent tier takes in
    together (rmm.engine.services.results.ingest_results) cost one insert, not one each."""
    made = [
        (item, *_unsaved(**{key: value for key, value in item.items() if key not in ("actor", "action")}))
        for item in items
    ]
    rows = [row for _, row, _ in made]
    pending = len(rows)

    def then(row: RmmEvidence):
        def numbered(sequence: int) -> None:
            nonlocal pending
            row.history_sequence = sequence
            pending -= 1
            if not pending:  # the last event's number is known: every row has its own
                RmmEvidence.objects.bulk_create(rows, batch_size=500)

        return numbered

    with transaction.atomic(savepoint=False):
        for item, row, event_payload in made:
            actor, action = item.get("actor", "system"), item.get("action", "evidence.recorded")
            history.append(actor, action, row, site_id=row.site_id, payload=event_payload, then=then(row))
    return rows


def _unsaved(
    *,
    asset,
    evidence_type: str,
    related_entity: str,
    related_id,
    document: dict | None = None,
    content: bytes | None = None,
    extension: str = "json",
    site_id=None,
    psa_case_id=None,
    psa_task_id=None,
    payload: dict | None = None,
    stored: tuple[str, str] | None = None,
) -> tuple[RmmEvidence, dict]:
    """A record with its blob stored, not yet saved, and the payload of its history event."""
    if not types.is_registered(evidence_type):
        raise InvalidInput(f"Unknown evidence type {evidence_type!r}.", field="evidence_type")
    if stored is None:
        data = document_bytes(document) if document is not None else content
        if data is None:
            raise InvalidInput("Evidence needs a document or content.")
        stored = store_blob(data, extension)
    digest, uri = stored
    if psa_task_id and not psa_case_id:
        psa_case_id = PsaTask.objects.values_list("case_id", flat=True).get(pk=psa_task_id)
    if site_id is None and asset is not None:
        site_id = asset.site_id
    row = RmmEvidence(
        id=uuid.uuid4(),
        asset=asset,
        site_id=site_id,
        evidence_type=evidence_type,
        related_entity=related_entity,
        related_id=related_id,
        psa_case_id=psa_case_id,
        psa_task_id=psa_task_id,
        storage_uri=uri,
        hash=digest,
        captured_at=timezone.now(),
    )
    event_payload = {"evidence_type": evidence_type, "related": f"{related_entity}:{related_id}", "hash": digest}
    event_payload.update(payload or {})
    return row, event_payload


# --- reading ----------------------------------------------------------------------------------


def open_blob(row: RmmEvidence):
    """The blob's file, opened for reading; a missing blob is a clear 409, never a 500."""
    name = storage_name(row)
    try:
        return default_storage.open(name, "rb")
    except (FileNotFoundError, OSError):
        history.record_refusal(
            "system", "evidence.read", row, reason="blob missing from the store", site_id=row.site_id
        )
        raise Conflict("The evidence blob is missing from the store.") from None


def read_blob(row: RmmEvidence) -> bytes:
    """The blob's bytes, rechecked against the record's hash."""
    with open_blob(row) as fh:
        data = fh.read()
    if hashlib.sha256(data).hexdigest() != row.hash:
        history.record_refusal(
            "system", "evidence.read", row, reason="blob does not match its hash", site_id=row.site_id
        )
        raise Conflict("The stored evidence blob does not match its recorded hash.")
    return data


def iter_blob(row: RmmEvidence) -> Iterator[bytes]:
    """The blob in chunks, for large blobs; the caller checks the running hash at the end."""
    with open_blob(row) as fh:
        yield from iter(lambda: fh.read(CHUNK), b"")


def visible_evidence(user) -> QuerySet[RmmEvidence]:
    """Evidence the caller may read: its sites' records; anchors (no site) for all-site holders."""
    if not access.can(user, "view_evidence"):
        return RmmEvidence.objects.none()
    scope = Q(site__in=access.visible_sites(user))
    if access.sees_all_sites(user):
        scope |= Q(site__isnull=True)
    return RmmEvidence.objects.filter(scope)


# --- legal holds ------------------------------------------------------------------------------


def _require(user, capability: str, action: str, subject=None) -> None:
    if not access.can(user, capability):
        history.record_refusal(user, action, subject, reason=f"role may not {capability.replace('_', ' ')}")
        raise Forbidden(f"Your role may not {capability.replace('_', ' ')}.")


def visible_holds(user) -> QuerySet[LegalHold]:
    sites = access.visible_sites(user)
    return LegalHold.objects.filter(Q(site__in=sites) | Q(psa_case__site__in=sites)).select_related(
        "site", "psa_case", "placed_by", "released_by"
    )


def place_hold(user, *, site_ref: str | None = None, psa_case_id=None, reason: str) -> LegalHold:
    """Stop retention from deleting anything of a site or a PSA case, until released."""
    _require(user, "manage_legal_holds", "legal_hold.place")
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("Say why the evidence is held.", field="reason")
    if bool(site_ref) == bool(psa_case_id):
        raise InvalidInput("Hold either a site or a PSA case.", field="site")
    site = case = None
    if site_ref:
        site = resolve_site(user, site_ref)
    else:
        case = PsaCase.objects.filter(pk=psa_case_id, site__in=access.visible_sites(user)).first()
        if case is None:
            raise InvalidInput("No such PSA case.", field="psa_case")
    with transaction.atomic():
        hold = LegalHold.objects.create(site=site, psa_case=case, reason=reason, placed_by=user)
        history.append(
            user,
            "legal_hold.placed",
            hold,
            site_id=site.pk if site else case.site_id,
            payload={"target": hold.target_label, "reason": reason},
        )
    return hold


def release_hold(user, hold: LegalHold, reason: str) -> LegalHold:
    _require(user, "manage_legal_holds", "legal_hold.release", hold)
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("Say why the hold can be released.", field="reason")
    with transaction.atomic():
        won = LegalHold.objects.filter(pk=hold.pk, released_at__isnull=True).update(
            released_at=timezone.now(), released_by=user, release_reason=reason
        )
        if not won:
            raise Conflict("This legal hold is already released.")
        history.append(
            user,
            "legal_hold.released",
            hold,
            site_id=hold.site_id or hold.psa_case.site_id,
            payload={"target": hold.target_label, "reason": reason},
        )
    hold.refresh_from_db()
    return hold


def resolve_site(user, ref: str):
    """A site the caller may see, by name or id; otherwise a 400 on ``site``."""
    sites = access.visible_sites(user)
    site = None
    with contextlib.suppress(ValueError):
        site = sites.filter(pk=uuid.UUID(str(ref))).first()
    if site is None:
        site = sites.filter(name=ref).first()
    if site is None:
        raise InvalidInput(f"No site {ref!r} that you may use.", field="site")
    return site
