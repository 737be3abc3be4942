"""The content-addressed blob store: bytes written once under their own sha256, through Django's
default storage (a local folder, or any S3-compatible store: ``RMM_EVIDENCE_STORAGE``).

Evidence documents and history anchors (``evidence``) and approved artefacts' content use it;
each names its own folder. A name is never overwritten: the bytes under it are the bytes its hash
names, or the store has been altered and storing is refused, loudly. A store that refuses a write
is a dependency down (``evidence_storage`` in ``/readyz``): answered 503, never 500.
"""

from __future__ import annotations

import hashlib
import tempfile
from typing import IO

from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage

from rmm.core import dependencies
from rmm.core.errors import Conflict
from rmm.history import services as history

CHUNK = 1024 * 1024


def store_label() -> str:
    """The configured store, as the prefix of every storage URI written now."""
    bucket = getattr(default_storage, "bucket_name", None)
    if bucket:  # django-storages S3Storage (any S3-compatible store)
        location = (getattr(default_storage, "location", "") or "").strip("/")
        return f"s3://{bucket}/{location}".rstrip("/")
    return "storage://default"


def content_name(folder: str, digest: str, extension: str) -> str:
    """``<folder>/<first two hex digits>/<sha256>.<extension>``: no folder grows past 1/256th."""
    return f"{folder}/{digest[:2]}/{digest}.{extension}"


def digest_of(name: str) -> str:
    """The sha256 of what the store holds under ``name``, read in chunks."""
    sha = hashlib.sha256()
    with default_storage.open(name, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            sha.update(chunk)
    return sha.hexdigest()


def put(name: str, data: bytes | IO[bytes], digest: str, *, action: str) -> None:
    """Write ``data`` (bytes, or a file read from its start in chunks) at ``name`` once. A blob
    already there is never overwritten: it must already hold the same bytes, or the store has
    been tampered with, which is refused (409) and recorded as ``refused.<action>``. A store that
    refuses the write is ``Unavailable`` (503): what needed the blob waits and is tried again."""
    try:
        if not default_storage.exists(name):
            saved = default_storage.save(name, ContentFile(data) if isinstance(data, bytes) else File(data))
            if saved == name:
                dependencies.mark_up(dependencies.EVIDENCE_STORAGE)
                return
            default_storage.delete(saved)  # a racing writer stored it first; keep theirs
    except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the store refused
        reason = f"writing {name} failed: {dependencies.short(exc)}"
        dependencies.mark_down(dependencies.EVIDENCE_STORAGE, reason)
        raise dependencies.Unavailable(dependencies.EVIDENCE_STORAGE, reason) from exc
    if digest_of(name) != digest:
        history.record_refusal(
            "system", action, reason="stored blob does not match its name's hash", payload={"name": name}
        )
        raise Conflict(f"The store holds different bytes under {name}; it has been altered.")


def store(data: bytes, *, folder: str, extension: str, action: str) -> tuple[str, str]:
    """Store ``data`` under its own hash in ``folder``: (sha256, storage URI)."""
    digest = hashlib.sha256(data).hexdigest()
    name = content_name(folder, digest, extension)
    put(name, data, digest, action=action)
    return digest, f"{store_label()}/{name}"


class TooLarge(Exception):
    """More bytes than the caller allows arrived; nothing was stored."""


def spool(chunks, *, max_size: int) -> tuple[IO[bytes], str, int]:
    """Copy ``chunks`` (an iterable of bytes) into a temporary file, hashing on the way, never
    holding more than one chunk in memory: (the file at its start, sha256, size). Past
    ``max_size`` bytes it stops and raises :class:`TooLarge`. The caller closes the file."""
    sha = hashlib.sha256()
    size = 0
    spooled = tempfile.TemporaryFile()  # noqa: SIM115 - handed to the caller, who closes it
    try:
        for chunk in chunks:
            size += len(chunk)
            if size > max_size:
                raise TooLarge(f"more than {max_size} bytes")
            sha.update(chunk)
            spooled.write(chunk)
    except BaseException:
        spooled.close()
        raise
    spooled.seek(0)
    return spooled, sha.hexdigest(), size


def read(name: str, digest: str, *, action: str) -> bytes:
    """The bytes under ``name``, rechecked against ``digest``; missing or altered is a 409,
    recorded as ``refused.<action>``, never a 500."""
    try:
        with default_storage.open(name, "rb") as fh:
            data = fh.read()
    except (FileNotFoundError, OSError):
        history.record_refusal("system", action, reason="blob missing from the store", payload={"name": name})
        raise Conflict("The blob is missing from the store.") from None
    if hashlib.sha256(data).hexdigest() != digest:
        history.record_refusal("system", action, reason="blob does not match its hash", payload={"name": name})
        raise Conflict("The stored blob does not match its recorded hash.")
    return data
