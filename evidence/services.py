"""Evidence: canonical JSON documents stored by their sha256 through Django's storage API."""

from __future__ import annotations

import hashlib
import json

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

from evidence.models import RmmEvidence
from rmm.errors import Conflict
from rmm.history import services as history
from rmm_agent.protocol import canonical_json

URI_SCHEME = "storage://default/"


def blob_name(digest: str) -> str:
    return f"evidence/{digest[:2]}/{digest}.json"


def store_blob(data: bytes) -> tuple[str, str]:
    """Store ``data`` under its own hash; an existing blob is never overwritten."""
    digest = hashlib.sha256(data).hexdigest()
    name = blob_name(digest)
    if not default_storage.exists(name):
        saved = default_storage.save(name, ContentFile(data))
        if saved != name:  # a racing writer stored the same content first
            default_storage.delete(saved)
    return digest, URI_SCHEME + name


def record(*, asset, evidence_type: str, related_entity: str, related_id, document: dict, site_id=None) -> RmmEvidence:
    """Write the blob, then the record, and note both in the history."""
    document = json.loads(json.dumps(document, cls=DjangoJSONEncoder))
    digest, uri = store_blob(canonical_json(document))
    row = RmmEvidence.objects.create(
        asset=asset,
        evidence_type=evidence_type,
        related_entity=related_entity,
        related_id=related_id,
        storage_uri=uri,
        hash=digest,
        captured_at=timezone.now(),
    )
    history.append(
        "system",
        "evidence.recorded",
        row,
        site_id=site_id,
        payload={"evidence_type": evidence_type, "related": f"{related_entity}:{related_id}", "hash": digest},
    )
    return row


def read_blob(row: RmmEvidence) -> bytes:
    """The blob's bytes, rechecked against the record's hash."""
    name = row.storage_uri.removeprefix(URI_SCHEME)
    with default_storage.open(name, "rb") as fh:
        data = fh.read()
    if hashlib.sha256(data).hexdigest() != row.hash:
        history.record_refusal("system", "evidence.read", row, reason="blob does not match its hash")
        raise Conflict("The stored evidence blob does not match its recorded hash.")
    return data
