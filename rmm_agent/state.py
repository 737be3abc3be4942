"""The agent's state directory: config (identity and secret), small state, and the spool.

Layout::

    DIR/config.json     identity, secret, the server's signing keys (0600)
    DIR/ca.pem          the CA pinned at enrollment with --ca-file, a copy (0600)
    DIR/state.json      what the server acknowledged (each fact namespace's hash)
    DIR/handled.json    ids of instructions already run or refused (replay ledger)
    DIR/spool/<id>.json results not yet accepted by the server
    DIR/running/<id>.json a record of each running instruction (how to end it after a crash)
    DIR/work/<id>/      an instruction's work dir (its cwd) while it runs
    DIR/reboot.json     the step after which the endpoint reboots, until the server heard it came back

Everything is written atomically (temp file, fsync, rename) so a crash or power loss never
leaves a half-written secret or a half-written result behind.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from .protocol import iso_utc, parse_iso

log = logging.getLogger("rmm_agent")

CONFIG_KEYS = (
    "server",
    "agent_id",
    "asset_id",
    "secret",
    "server_public_key",
    "heartbeat_interval",
)


# A handled instruction is forgotten this long after its not_after: verification refuses it as
# expired by then, and the margin covers the clock being stepped back (e.g. by NTP at boot).
LEDGER_GRACE = timedelta(hours=1)


class NotEnrolled(Exception):
    """The state directory holds no usable enrollment."""


def atomic_write_json(path: Path, obj: Any, mode: int = 0o600) -> None:
    """Write JSON so readers see either the old file or the complete new one."""
    _atomic_write_bytes(path, json.dumps(obj, ensure_ascii=False, sort_keys=True, indent=1).encode("utf-8"), mode)


def _atomic_write_bytes(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` so readers see either the old file or the complete new one."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; best effort on platforms that cannot open directories."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _mtime(path: Path) -> float:
    """Modification time, or 0 for a file that vanished meanwhile."""
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


class StateDir:
    """Paths and persistence for one agent identity."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self.config_path = self.root / "config.json"
        self.state_path = self.root / "state.json"
        self.ledger_path = self.root / "handled.json"
        self.spool_dir = self.root / "spool"
        self.work_dir = self.root / "work"
        self.running_dir = self.root / "running"
        self.reboot_path = self.root / "reboot.json"
        self.ca_path = self.root / "ca.pem"

    def ensure(self, *, tighten: bool = False) -> None:
        """Create the directories; with ``tighten`` force the root to 0700 (it holds a secret)."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if tighten:
            os.chmod(self.root, 0o700)
        self.spool_dir.mkdir(mode=0o700, exist_ok=True)
        self.work_dir.mkdir(mode=0o700, exist_ok=True)
        self.running_dir.mkdir(mode=0o700, exist_ok=True)

    # -- config -------------------------------------------------------------------------------

    def load_config(self) -> dict:
        """Return the enrollment config or raise :class:`NotEnrolled`."""
        try:
            config = json.loads(self.config_path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise NotEnrolled(f"not enrolled: {self.config_path} does not exist") from exc
        except (OSError, ValueError) as exc:
            raise NotEnrolled(f"unreadable config {self.config_path}: {exc}") from exc
        missing = [key for key in CONFIG_KEYS if key not in config]
        if missing:
            raise NotEnrolled(f"config {self.config_path} lacks {', '.join(missing)}")
        return config

    def save_config(self, config: dict) -> None:
        """Persist the config with owner-only permissions."""
        self.ensure(tighten=True)
        atomic_write_json(self.config_path, config, mode=0o600)

    def pin_ca(self, source: str | None) -> str | None:
        """Copy the CA file given at enrollment into the state directory (a later change or removal
        of the original changes nothing) and return the copy's path; without one, drop an old copy."""
        self.ensure(tighten=True)
        if source is None:
            self.ca_path.unlink(missing_ok=True)
            return None
        _atomic_write_bytes(self.ca_path, Path(source).read_bytes())
        return str(self.ca_path)

    def save_keys(self, config: dict, field: str, keys: dict[str, bytes]) -> dict:
        """Durably store the keys of one purpose the agent now trusts (``server_keys``: instruction
        keys, ``release_keys``: release keys; ``{key id: raw public key}``); returns the new
        config. Raises OSError when it could not be written: the caller must then keep trusting
        the keys it had."""
        updated = {**config, field: {kid: base64.b64encode(raw).decode() for kid, raw in keys.items()}}
        self.save_config(updated)
        return updated

    def save_secret(self, config: dict, secret: str) -> dict:
        """Durably store a rotated secret; returns the new config (``config`` is left as is).

        Raises OSError when it could not be written: the caller must then keep the old secret.
        """
        updated = {**config, "secret": secret}
        self.save_config(updated)
        return updated

    # -- small mutable state ------------------------------------------------------------------

    def load_state(self) -> dict:
        """Return state.json, or an empty state if it is missing or damaged (it is a cache)."""
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def save_state(self, state: dict) -> None:
        """Persist state.json."""
        atomic_write_json(self.state_path, state, mode=0o600)

    def acked_namespaces(self) -> tuple[dict[str, str], dict[str, dict]]:
        """The fact namespaces the server last acknowledged: ``{namespace: hash}`` (a namespace
        missing: not yet), and ``{namespace: body}`` of those, the base of the next patch."""
        state = self.load_state()
        hashes, bodies = state.get("acked_namespaces"), state.get("acked_bodies")
        hashes = {n: h for n, h in hashes.items() if isinstance(h, str)} if isinstance(hashes, dict) else {}
        bodies = {n: b for n, b in bodies.items() if isinstance(b, dict)} if isinstance(bodies, dict) else {}
        return hashes, bodies

    def set_acked_namespaces(self, hashes: dict[str, str], bodies: dict[str, dict]) -> None:
        """Record the acknowledged namespaces (written only when they changed)."""
        state = self.load_state()
        if state.get("acked_namespaces") == hashes and state.get("acked_bodies") == bodies:
            return
        state["acked_namespaces"], state["acked_bodies"] = hashes, bodies
        self.save_state(state)

    # -- a reboot a step asked for ------------------------------------------------------------

    def save_reboot(self, record: dict) -> None:
        """Durably note the step after which the endpoint reboots (before its result is sent)."""
        atomic_write_json(self.reboot_path, record, mode=0o600)

    def pending_reboot(self) -> dict | None:
        """The noted reboot, or None (a damaged note is dropped: the server's grace ends the job)."""
        try:
            record = json.loads(self.reboot_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("reboot record %s is unreadable (%s); dropped", self.reboot_path.name, exc)
            self.clear_reboot()
            return None
        ok = isinstance(record, dict) and isinstance(record.get("instruction_id"), str)
        return record if ok else None

    def clear_reboot(self) -> None:
        """Forget the noted reboot once the server heard that the endpoint came back."""
        with contextlib.suppress(FileNotFoundError):
            self.reboot_path.unlink()

    # -- replay ledger ------------------------------------------------------------------------

    def load_ledger(self) -> dict[str, str]:
        """``{instruction_id: not_after}`` of instructions already run or refused.

        A damaged ledger is set aside (and logged), so the agent keeps working; it is written
        atomically, so that takes more than a crash.
        """
        try:
            ledger = json.loads(self.ledger_path.read_text(encoding="utf-8"))
            if not isinstance(ledger, dict):
                raise ValueError("not an object")
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("replay ledger %s is unreadable (%s); moved aside", self.ledger_path.name, exc)
            with contextlib.suppress(OSError):
                os.replace(self.ledger_path, self.ledger_path.with_suffix(".corrupt"))
            return {}
        return {key: value for key, value in ledger.items() if isinstance(key, str) and isinstance(value, str)}

    def is_handled(self, instruction_id: str) -> bool:
        """True if this instruction was already run or refused (and has not long expired)."""
        return instruction_id in self.load_ledger()

    def mark_handled(self, instruction_id: str, not_after: datetime, now: datetime) -> None:
        """Durably remember an instruction before it runs; prunes entries long expired.

        Raises OSError when the ledger cannot be written: the caller must not run it then.
        """
        ledger = {}
        for key, value in self.load_ledger().items():
            try:
                if parse_iso(value) + LEDGER_GRACE > now:
                    ledger[key] = value
            except (TypeError, ValueError):
                continue
        ledger[instruction_id] = iso_utc(not_after)
        atomic_write_json(self.ledger_path, ledger, mode=0o600)

    # -- spool --------------------------------------------------------------------------------

    def spool_path(self, instruction_id: str) -> Path:
        """Where the result for ``instruction_id`` waits until the server accepts it."""
        return self.spool_dir / f"{instruction_id}.json"

    def spool_result(self, result: dict) -> Path:
        """Durably store a result before any attempt to send it."""
        self.spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.spool_path(result["instruction_id"])
        atomic_write_json(path, result, mode=0o600)
        return path

    def is_spooled(self, instruction_id: str) -> bool:
        """True while a result for this instruction is still waiting to be delivered."""
        return self.spool_path(instruction_id).exists()

    def spooled_results(self) -> list[dict]:
        """All spooled results, oldest first; unreadable files are set aside, not resent."""
        try:
            paths = [path for path in self.spool_dir.iterdir() if path.suffix == ".json"]
        except FileNotFoundError:
            return []
        paths.sort(key=lambda path: (_mtime(path), path.name))
        results = []
        for path in paths:
            try:
                result = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(result, dict) or "instruction_id" not in result:
                    raise ValueError("not a result")
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                log.error("spool file %s is unreadable (%s); moved aside", path.name, exc)
                os.replace(path, path.with_suffix(".corrupt"))
                continue
            results.append(result)
        return results

    def discard_spooled(self, instruction_id: str) -> None:
        """Forget a result once the server has given a definitive answer."""
        with contextlib.suppress(FileNotFoundError):
            self.spool_path(instruction_id).unlink()
