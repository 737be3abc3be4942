"""Live output: what a running step prints, sent to the server while it runs (docs/agent.md,
Live output), for steps whose signed payload offers it.

Best effort by design: the result stays the record, so nothing here is spooled. What could not
be sent waits for the next call (at most LIVE_CHUNK_BYTES of each stream: the oldest is dropped
and the server, seeing the offset jump, marks the gap); a refusal ends the stream, never the step.
"""

from __future__ import annotations

import codecs
import logging
import threading

from .client import Client, TransportError
from .protocol import LIVE_CHUNK_BYTES, LIVE_OUTPUT_SECONDS, LIVE_STREAMS, utf8_tail

log = logging.getLogger("rmm_agent")

SEND_TIMEOUT = 5.0  # a slow server delays the step's end by at most this (the sender is joined)


class _Stream:
    """One stream's text not yet acknowledged, and its position: ``start`` is the number of
    characters of the stream before ``pending`` (sent, or dropped for room)."""

    def __init__(self) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.pending = ""
        self.start = 0

    def feed(self, data: bytes) -> None:
        self.pending += self.decoder.decode(data)
        kept = utf8_tail(self.pending, LIVE_CHUNK_BYTES)
        self.start += len(self.pending) - len(kept)
        self.pending = kept

    def chunk(self) -> dict:
        return {"offset": self.start, "text": self.pending}

    def acknowledged(self, chunk: dict) -> None:
        """The server has ``chunk``: forget what of it is still pending (more may have come)."""
        end = chunk["offset"] + len(chunk["text"])
        if end > self.start:
            self.pending = self.pending[end - self.start :]
            self.start = end


class LiveOutput:
    """Streams one instruction's stdout and stderr: the runner's readers :meth:`feed` it, a
    thread of its own posts what came, at most every ``interval`` seconds, until :meth:`stop`."""

    def __init__(self, client: Client, instruction_id: str, *, interval: float = LIVE_OUTPUT_SECONDS) -> None:
        self.client = client
        self.instruction_id = instruction_id
        self.interval = interval
        self.streams = {name: _Stream() for name in LIVE_STREAMS}
        self._lock = threading.Lock()
        self._data = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"live-{instruction_id}", daemon=True)

    def feed(self, name: str, data: bytes) -> None:
        """Bytes the step wrote to stream ``name`` (called from its reader thread)."""
        with self._lock:
            self.streams[name].feed(data)
        self._data.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """No more calls (what is pending is left: the result follows); waits for one in flight,
        so none arrives after the result."""
        self._stop.set()
        self._data.set()
        if self._thread.is_alive():
            self._thread.join(SEND_TIMEOUT + 1)

    def _run(self) -> None:
        while True:
            self._data.wait()
            if self._stop.is_set():
                return
            self._data.clear()
            delay = self.send()
            if delay is None or self._stop.wait(delay):
                return

    def send(self) -> float | None:
        """One call with what is pending; the seconds before the next may be made, or None when
        the server will take no more (the instruction ended, or it is not this agent's)."""
        with self._lock:
            chunks = {name: stream.chunk() for name, stream in self.streams.items() if stream.pending}
        if not chunks:
            return self.interval
        try:
            answer = self.client.post_output({"instruction_id": self.instruction_id, **chunks}, timeout=SEND_TIMEOUT)
        except TransportError:
            self._data.set()  # kept: sent with what comes next
            return self.interval
        if answer.status == 200:
            with self._lock:
                for name, chunk in chunks.items():
                    self.streams[name].acknowledged(chunk)
            return self.interval
        if answer.status in (429, 503):
            self._data.set()
            return max(self.interval, answer.retry_after(self.interval))
        log.info("live output of %s stopped (HTTP %s): %s", self.instruction_id, answer.status, answer.detail)
        return None
