"""A session's recording as it runs: asciicast v2 (a JSON header line, then one
``[seconds, "i" | "o", text]`` line per frame relayed in or out), written to the blob store in
chunks of :data:`CHUNK_BYTES`, each chained to the one before by hash (RecordingChunk), so the
recording is never held whole in memory and a truncated or edited one is detectable. Sealing
copies the chunks, one at a time, into one content-addressed ``.cast`` blob whose sha256 becomes
the ``session_recording`` evidence record.

Bytes that are not UTF-8 are kept: they are written as lone surrogates (``\\udcXX``, Python's
``surrogateescape``), from which the exact bytes come back."""

from __future__ import annotations

import codecs
import hashlib
import json
import time
from collections.abc import Iterable

from django.core.files.storage import default_storage
from django.db import transaction

from evidence import services as evidence
from rmm.core import blobs
from sessions import services
from sessions.models import RecordingChunk

CHUNK_BYTES = 64 * 1024
FOLDER = "session-recordings"
ACTION = "remote_session.record"
WIDTH, HEIGHT = 80, 24


class RecordingFailed(Exception):
    """A chunk could not be written: the session must end (recording is never optional)."""


def link(previous_chain: str, chunk_sha256: str) -> str:
    return hashlib.sha256((previous_chain + chunk_sha256).encode()).hexdigest()


def genesis(session_id) -> str:
    """The chain before the first chunk: the session's id, hashed."""
    return hashlib.sha256(str(session_id).encode()).hexdigest()


class Recorder:
    """Records one session's frames; :meth:`flush` and :meth:`seal` do I/O, :meth:`frame` none
    (the relay calls it on its event loop and flushes off it once :attr:`due`)."""

    def __init__(self, session_id, started: float | None = None) -> None:
        self.session_id = session_id
        self.started = started if started is not None else time.time()
        self.buffer = bytearray()
        self.index = 0
        self.offset = 0
        self.chain = genesis(session_id)
        self.decoders = {kind: codecs.getincrementaldecoder("utf-8")("surrogateescape") for kind in "io"}
        header = {"version": 2, "width": WIDTH, "height": HEIGHT, "timestamp": int(self.started)}
        header["title"] = f"remote session {session_id}"
        self.buffer += json.dumps(header).encode() + b"\n"

    def frame(self, kind: str, data: bytes, at: float | None = None) -> None:
        """One frame relayed in (``i``, keystrokes) or out (``o``, the terminal's output)."""
        text = self.decoders[kind].decode(data)
        if not text:
            return  # an incomplete UTF-8 sequence: it comes with the next frame
        moment = round((at if at is not None else time.time()) - self.started, 6)
        self.buffer += json.dumps([moment, kind, text]).encode("utf-8", "surrogatepass") + b"\n"

    @property
    def due(self) -> bool:
        return len(self.buffer) >= CHUNK_BYTES

    def flush(self) -> None:
        """Write what is buffered as the next chunk (raises RecordingFailed when it cannot)."""
        if not self.buffer:
            return
        data = bytes(self.buffer)
        chunk = put_chunk(data, self.index, self.offset, self.chain)
        services.record_chunk(self.session_id, **chunk)
        self.chain = chunk["chain"]
        self.index += 1
        self.offset += len(data)
        del self.buffer[: len(data)]


def put_chunk(data: bytes, index: int, offset: int, previous_chain: str) -> dict:
    """Store one chunk's bytes in the blob store: its row's fields (index, offset, size, sha256,
    chain, blob) for :func:`sessions.services.record_chunk`. Raises RecordingFailed when it cannot."""
    digest = hashlib.sha256(data).hexdigest()
    name = blobs.content_name(FOLDER, digest, "castpart")
    try:
        blobs.put(name, data, digest, action=ACTION)
    except Exception as exc:  # noqa: BLE001 - whatever the store says, the recording stopped
        raise RecordingFailed(f"chunk {index} could not be written: {exc}") from exc
    return {
        "index": index,
        "offset": offset,
        "size": len(data),
        "sha256": digest,
        "chain": link(previous_chain, digest),
        "blob": name,
    }


def store_fetched(session_id, pieces: Iterable[bytes]) -> None:
    """A recording a provider made itself (MeshCentral's ``.mcrec``), as it hands it back, into the
    same chunk chain the relay writes: each piece is stored as it comes (never the whole file in
    memory), and the chunks' rows are recorded together once the last piece came, so a pull cut
    short records none and is tried again whole."""
    rows, chain, offset = [], genesis(session_id), 0
    for data in pieces:
        if not data:
            continue
        rows.append(put_chunk(data, len(rows), offset, chain))
        chain, offset = rows[-1]["chain"], offset + len(data)
    with transaction.atomic():
        for row in rows:
            services.record_chunk(session_id, **row)


def verify_chunks(session_id) -> list[dict]:
    """The session's chunks as stored, each checked against its hash and its link in the chain:
    [{"index", "offset", "size", "sha256", "chain"}]; raises RecordingFailed naming the first
    chunk that does not verify."""
    chain = genesis(session_id)
    listed = []
    for chunk in RecordingChunk.objects.filter(session_id=session_id).order_by("index"):
        if blobs.digest_of(chunk.blob) != chunk.sha256:
            raise RecordingFailed(f"chunk {chunk.index} (bytes {chunk.offset}-) does not match its sha256")
        chain = link(chain, chunk.sha256)
        if chain != chunk.chain:
            raise RecordingFailed(f"chunk {chunk.index} breaks the chain")
        listed.append(
            {"index": chunk.index, "offset": chunk.offset, "size": chunk.size, "sha256": chunk.sha256, "chain": chain}
        )
    return listed


def seal(session_id, extension: str = "cast") -> tuple[str, str, int, list[dict]]:
    """The whole recording as one evidence blob (named ``<sha256>.<extension>``), copied chunk by
    chunk after each verified: (sha256, storage URI, size, the chunks)."""
    chunks = verify_chunks(session_id)
    names = list(RecordingChunk.objects.filter(session_id=session_id).order_by("index").values_list("blob", flat=True))

    def pieces():
        for name in names:
            with default_storage.open(name, "rb") as fh:
                yield fh.read()

    spooled, digest, size = blobs.spool(pieces(), max_size=2**40)
    with spooled:
        name = evidence.blob_name(digest, extension)  # where every evidence blob is, by its hash
        blobs.put(name, spooled, digest, action=ACTION)
    return digest, f"{blobs.store_label()}/{name}", size, chunks
