"""The agent's self-update: one signed ``agent_update`` instruction, carried out in order.

Wait until no other instruction runs; download the artefact; verify the manifest with a pinned
release key and the file against it; unpack next to the current version; record the pending
update; swap ``current``; exit with :data:`EXIT_UPDATED` so the supervisor (or systemd) starts
the new version. The new version confirms the update after its first accepted heartbeat, and
that is when the instruction's result is sent. If it never does, :func:`update_check` (before
each start) swaps back and the old version reports the rollback as the result.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import __version__
from .client import Client, TransportError
from .release import (
    DEFAULT_CHECK_IN_SECONDS,
    REASON_ARTEFACT,
    REASON_LAYOUT,
    Install,
    ReleaseRefused,
    check_artefact,
    rollback_reason,
    valid_version,
    verify_manifest,
)
from .results import make_result
from .state import StateDir, atomic_write_json

log = logging.getLogger("rmm_agent")

INTERPRETER = "agent_update"  # the instruction's interpreter: v1 agents refuse it as unsupported
EXIT_UPDATED = 75  # the agent swapped in a new version: start it
EXIT_NO_CHECK_IN = 76  # a new version that could not check in in time: roll it back
MAX_ARTEFACT_BYTES = 64 * 1024 * 1024


def pending_path(state: StateDir) -> Path:
    return state.root / "update.json"


def load_pending(state: StateDir) -> dict | None:
    try:
        return json.loads(pending_path(state).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.error("unreadable pending update %s: %s", pending_path(state), exc)
        return None


def save_pending(state: StateDir, pending: dict) -> None:
    atomic_write_json(pending_path(state), pending)


def clear_pending(state: StateDir) -> None:
    with contextlib.suppress(FileNotFoundError):
        pending_path(state).unlink()


def read_order(content: str) -> dict:
    """The update order a signed instruction's content holds, or :class:`ReleaseRefused`."""
    try:
        order = json.loads(content)
    except ValueError:
        raise ReleaseRefused(REASON_ARTEFACT, "the update order is not JSON") from None
    if (
        not isinstance(order, dict)
        or not valid_version(order.get("version"))
        or not isinstance(order.get("url"), str)
        or not order["url"].startswith("/")
        or not isinstance(order.get("manifest"), dict)
    ):
        raise ReleaseRefused(REASON_ARTEFACT, "a malformed update order")
    return order


def download(client: Client, path: str, destination: Path) -> None:
    """Fetch a release artefact of this server into ``destination`` (at most
    :data:`MAX_ARTEFACT_BYTES`); raises TransportError or OSError on any failure."""
    status, _headers, answer = client.download(path)
    try:
        if status != 200:
            raise TransportError(f"{path}: HTTP {status}")
        with open(destination, "wb") as handle:
            written = 0
            for chunk in iter(lambda: answer.read(1 << 16), b""):
                written += len(chunk)
                if written > MAX_ARTEFACT_BYTES:
                    raise TransportError(f"{path}: more than {MAX_ARTEFACT_BYTES} bytes")
                handle.write(chunk)
    finally:
        answer.close()


def prepare(order: dict, release_keys: dict, install: Install | None, client: Client) -> Path:
    """Everything before the swap: the new version unpacked, or :class:`ReleaseRefused` (and
    nothing changed); the artefact is fetched from ``client``'s server."""
    if install is None:
        raise ReleaseRefused(REASON_LAYOUT, "this agent does not run from a versioned install")
    signed = verify_manifest(order["manifest"], release_keys)
    if signed["version"] != order["version"]:
        raise ReleaseRefused(REASON_ARTEFACT, f"the manifest is for version {signed['version']}")
    if signed["version"] == install.current_version():
        raise ReleaseRefused(REASON_ARTEFACT, f"version {signed['version']} is the current one")
    if signed["size"] > MAX_ARTEFACT_BYTES:
        raise ReleaseRefused(REASON_ARTEFACT, f"{signed['size']} bytes is more than an agent release may be")
    install.versions.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=install.versions, prefix=".download.")
    os.close(fd)
    archive = Path(name)
    try:
        download(client, order["url"], archive)
        check_artefact(archive, signed)
        return install.unpack(archive, signed["version"])
    finally:
        archive.unlink(missing_ok=True)


def swap_in(state: StateDir, install: Install, instruction_id: str, version: str, check_in_seconds: int) -> None:
    """Record the pending update, then swap: a crash between the two rolls back at the next start."""
    previous = install.current_version() or __version__
    save_pending(
        state,
        {
            "instruction_id": instruction_id,
            "from_version": previous,
            "to_version": version,
            "check_in_seconds": check_in_seconds,
            "deadline": time.time() + check_in_seconds,
            "starts": 0,
        },
    )
    install.swap(version)
    log.info("swapped in version %s (from %s); restarting", version, previous)


def update_check(state: StateDir, install: Install | None, now: datetime | None = None) -> str | None:
    """Before each start of the agent: count the start of an unconfirmed new version, and roll
    it back (swap ``current`` to the previous version, which stays on disk) when it has had its
    chance. Returns the rollback's reason, or None."""
    pending = load_pending(state)
    if pending is None or install is None or pending.get("rolled_back"):
        return None
    reason = rollback_reason(pending, now or datetime.now(UTC))
    if reason is None:
        pending["starts"] = pending.get("starts", 0) + 1
        save_pending(state, pending)
        return None
    if install.current_version() == pending["to_version"]:
        install.swap(pending["from_version"])
        shutil.rmtree(install.versions / pending["to_version"], ignore_errors=True)
    pending["rolled_back"] = reason
    save_pending(state, pending)
    log.error("rolled back to version %s: %s", pending["from_version"], reason)
    return reason


def outcome_after_start(state: StateDir, install: Install | None) -> dict | None:
    """After a heartbeat was accepted: the result a pending update now has (confirmed by this
    version, or rolled back to it), or None. The pending record goes once the result is spooled."""
    pending = load_pending(state)
    if pending is None:
        return None
    instruction_id = pending["instruction_id"]
    if pending.get("rolled_back"):
        return make_result(
            instruction_id,
            "error",
            reason=f"update to {pending['to_version']} rolled back to {__version__}: {pending['rolled_back']}",
        )
    if __version__ != pending["to_version"]:
        return make_result(
            instruction_id,
            "error",
            reason=f"update to {pending['to_version']} did not take: version {__version__} is running",
        )
    if install is not None:
        install.keep_only(pending["to_version"], pending["from_version"])
    return make_result(
        instruction_id,
        "completed",
        exit_code=0,
        stdout=f"rmm_agent updated from {pending['from_version']} to {__version__}\n",
    )


def check_in_deadline(state: StateDir, version: str | None) -> float | None:
    """Seconds left for ``version`` (swapped in, not yet confirmed) to check in, or None."""
    pending = load_pending(state)
    if pending is None or pending.get("rolled_back") or pending.get("to_version") != version:
        return None
    return max(0.0, float(pending.get("deadline", 0)) - time.time())


def order_check_in_seconds(order: dict[str, Any]) -> int:
    value = order.get("check_in_seconds")
    if isinstance(value, int) and not isinstance(value, bool) and 5 <= value <= 3600:
        return value
    return DEFAULT_CHECK_IN_SECONDS
