"""Fetching a step's artefacts before it runs (docs/agent.md, Artefacts).

Each artefact the signed payload names is streamed into a private file (0600, in a directory of
the agent's own that no other account can reach), resumed with HTTP Range from the bytes already
on disk after an interrupted transfer (a bounded number of times), and then checked: its size,
and the sha256 of what the file holds, read again through the descriptor the script is given.
Only then may the step run; any difference refuses it (``artefact_mismatch``) and runs nothing.
The time spent counts in the instruction's timeout, and an abort stops a download between two
reads.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import ssl
import time
from pathlib import Path
from typing import Protocol

from .client import Client, TransportError
from .protocol import artefact_env_name

log = logging.getLogger("rmm_agent")

MAX_ATTEMPTS = 5  # failed transfers of one artefact before it is given up
READ_SECONDS = 30.0  # the longest one read may wait, and so an abort
CHUNK = 256 * 1024
BACKOFF_SECONDS = 0.25  # doubled after each failed transfer
CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class ArtefactMismatch(Exception):
    """The bytes fetched are not those the signed payload names: the step must not run."""


class FetchFailed(Exception):
    """An artefact could not be fetched (refused by the server, or too many failed transfers)."""


class FetchStopped(Exception):
    """The instruction was aborted, or its time ran out, while an artefact was fetched."""

    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


class Stop(Protocol):
    """What can stop a download: the instruction's abort signal (runner.AbortSignal)."""

    reason: str | None

    def is_set(self) -> bool: ...

    def wait(self, timeout: float) -> bool: ...


class Fetcher:
    """Fetches artefacts from one server as one agent (its :class:`~rmm_agent.client.Client`)."""

    def __init__(self, client: Client, *, attempts: int = MAX_ATTEMPTS) -> None:
        self.client = client
        self.attempts = attempts

    def fetch_all(self, artefacts: list[dict], directory: Path, deadline: float, stop: Stop) -> dict[str, int]:
        """Fetch and verify every artefact into ``directory`` (the agent's, 0700): the script's
        environment variable of each -> a read-only descriptor of its verified file. Raises
        :class:`ArtefactMismatch`, :class:`FetchFailed` or :class:`FetchStopped`; the
        descriptors already opened are closed then."""
        opened: dict[str, int] = {}
        try:
            for item in artefacts:
                path = directory / item["name"]
                self._download(item, path, deadline, stop)
                opened[artefact_env_name(item["name"])] = verified(path, item["sha256"], item["size"])
        except BaseException:
            for fd in opened.values():
                os.close(fd)
            raise
        return opened

    def _download(self, item: dict, path: Path, deadline: float, stop: Stop) -> None:
        """Stream one artefact into ``path``, resuming from what is on disk after a failure."""
        size, name = item["size"], item["name"]
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        failures = 0
        with os.fdopen(fd, "r+b") as fh:
            while (have := fh.seek(0, os.SEEK_END)) < size:
                _check(deadline, stop, name)
                try:
                    problem = self._transfer(item, fh, have, deadline, stop)
                except (TransportError, OSError, http.client.HTTPException, ssl.SSLError) as exc:
                    problem = str(exc) or type(exc).__name__
                if fh.seek(0, os.SEEK_END) >= size:
                    break
                failures += 1
                if failures >= self.attempts:
                    raise FetchFailed(f"artefact {name}: {failures} transfers failed, the last: {problem}")
                log.warning("artefact %s: %s at byte %d; resuming", name, problem, fh.tell())
                stop.wait(min(BACKOFF_SECONDS * 2 ** (failures - 1), max(0.0, deadline - time.monotonic())))
            if fh.seek(0, os.SEEK_END) > size:
                raise ArtefactMismatch(f"artefact {name}: more bytes than its size")

    def _transfer(self, item: dict, fh, have: int, deadline: float, stop: Stop) -> str:
        """One GET from byte ``have``, appended to the file: why it ended before the artefact's
        size (the caller resumes from what is on disk)."""
        name, size = item["name"], item["size"]
        timeout = max(1.0, min(READ_SECONDS, deadline - time.monotonic()))
        status, headers, answer = self.client.download(item["url"], offset=have, timeout=timeout)
        with answer:
            if status == 206:
                found = CONTENT_RANGE_RE.fullmatch(headers.get("content-range", "").strip())
                if found is None or int(found.group(1)) != have:
                    raise FetchFailed(f"artefact {name}: the server answered another range than asked")
            elif status == 200:
                fh.seek(0)
                fh.truncate()  # the whole file again: what is on disk is dropped
            elif status == 416:
                raise ArtefactMismatch(f"artefact {name}: the server holds fewer bytes than its size")
            elif status == 429 or status >= 500:
                return f"HTTP {status}"  # tried again, as a failed transfer
            else:
                raise FetchFailed(f"artefact {name}: HTTP {status}: {_detail(answer)}")
            while chunk := answer.read(CHUNK):
                fh.write(chunk)
                if fh.tell() > size:
                    raise ArtefactMismatch(f"artefact {name}: more bytes than its size")
                _check(deadline, stop, name)
            return "the transfer ended early"


def verified(path: Path, sha256: str, size: int) -> int:
    """A read-only descriptor of ``path`` once what it holds, read through that descriptor, has
    ``size`` bytes hashing to ``sha256``; made readable by the run-as account (who can reach it
    only through the descriptor: ``/dev/fd/N``). Raises :class:`ArtefactMismatch` otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        digest, offset = hashlib.sha256(), 0
        while chunk := os.pread(fd, 1 << 20, offset):
            digest.update(chunk)
            offset += len(chunk)
        if offset != size or digest.hexdigest() != sha256:
            raise ArtefactMismatch(f"artefact {path.name}: {offset} bytes hashing to {digest.hexdigest()}")
        os.fchmod(fd, 0o444)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check(deadline: float, stop: Stop, name: str) -> None:
    if stop.is_set():
        raise FetchStopped("aborted", stop.reason or "aborted")
    if time.monotonic() >= deadline:
        raise FetchStopped("timed_out", f"timed out while fetching artefact {name}")


def _detail(answer) -> str:
    try:
        return answer.read(500).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return ""
