"""Signed releases of the agent and the versioned install it updates itself in.

Shared by the agent and the server (which builds manifests with :func:`manifest_payload`), so the
format is defined once.

- A **release manifest** names a release artefact (a ``.tar.gz`` of the ``rmm_agent`` package):
  its version, sha256 and size, signed by a **release key** (purpose ``releases``), a key set of
  its own beside the instruction keys, pinned at enrollment and rotated like them. A holder of
  the instruction key alone cannot make the agent run other code of its own.
- The **install root** (``/opt/rmm-agent`` from the Debian package) holds ``versions/<version>/``
  and the symlink ``current`` to one of them; an update unpacks next to the current version and
  swaps the symlink with one rename, so a crash leaves either version whole.
- The **pending update** (``update.json`` in the state directory) says which swap waits to be
  confirmed: the new version confirms it once a heartbeat was accepted; until then a restart
  (``update-check``, run by the supervisor or the unit's ExecStartPre) may roll it back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from . import keyring

RELEASES = "releases"  # the key purpose
MANIFEST = "rmm.agent_release"
VERSION_CHARS = set("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.+~-")
MAX_STARTS = 3  # starts of a new version that may end without a check-in before it is rolled back
DEFAULT_CHECK_IN_SECONDS = 120

# Why an update was refused (the instruction's result reason starts with one of these).
REASON_RELEASE_KEY = "release_signature"
REASON_ARTEFACT = "artefact_mismatch"
REASON_LAYOUT = "not_updatable"


class ReleaseRefused(Exception):
    """An update the agent will not install; nothing was swapped."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def valid_version(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 50 and set(value) <= VERSION_CHARS and value[0].isalnum()


def manifest_payload(version: str, sha256: str, size: int) -> str:
    """The text a release key signs for one artefact."""
    body = {"purpose": MANIFEST, "version": version, "sha256": sha256, "size": size}
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def verify_manifest(manifest: Any, release_keys: Mapping[str, bytes]) -> dict:
    """The signed fields of a manifest (``{"payload", "key_id", "signature"}``) whose signature
    verifies with the pinned release key it names, or :class:`ReleaseRefused`."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("payload"), str):
        raise ReleaseRefused(REASON_RELEASE_KEY, "no signed manifest")
    signer = manifest.get("key_id")
    if signer not in release_keys:
        raise ReleaseRefused(REASON_RELEASE_KEY, f"signed by key {signer}, which is not a pinned release key")
    if not keyring.verify(release_keys[signer], manifest["payload"].encode("utf-8"), manifest.get("signature")):
        raise ReleaseRefused(REASON_RELEASE_KEY, f"the signature of release key {signer} does not verify")
    try:
        body = json.loads(manifest["payload"])
    except ValueError:
        raise ReleaseRefused(REASON_RELEASE_KEY, "a malformed manifest") from None
    if (
        not isinstance(body, dict)
        or body.get("purpose") != MANIFEST
        or not valid_version(body.get("version"))
        or not isinstance(body.get("sha256"), str)
        or isinstance(body.get("size"), bool)
        or not isinstance(body.get("size"), int)
    ):
        raise ReleaseRefused(REASON_RELEASE_KEY, "a malformed manifest")
    return body


def check_artefact(path: Path, signed: dict) -> None:
    """The downloaded file is the one the manifest signs (size, then sha256)."""
    size = path.stat().st_size
    if size != signed["size"]:
        raise ReleaseRefused(REASON_ARTEFACT, f"{size} bytes, the manifest says {signed['size']}")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != signed["sha256"]:
        raise ReleaseRefused(REASON_ARTEFACT, "its sha256 is not the manifest's")


# --- the install --------------------------------------------------------------------------------


def install_root(module_file: str = __file__) -> Path | None:
    """The install root this code runs from (``<root>/versions/<version>/rmm_agent/``), or None
    when it runs from elsewhere (a checkout: it cannot update itself)."""
    here = Path(module_file).resolve().parent.parent
    return here.parent.parent if here.parent.name == "versions" else None


@dataclass(frozen=True)
class Install:
    root: Path

    @property
    def current(self) -> Path:
        return self.root / "current"

    @property
    def versions(self) -> Path:
        return self.root / "versions"

    def current_version(self) -> str | None:
        try:
            return os.readlink(self.current).rsplit("/", 1)[-1]
        except OSError:
            return None

    def unpack(self, archive: Path, version: str) -> Path:
        """Extract an artefact to ``versions/<version>`` (replacing a half-made one). Only regular
        files and directories under ``rmm_agent/``; anything else refuses the update."""
        target = self.versions / version
        staging = self.versions / f".{version}.unpacking"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = tar.getmembers()
                for member in members:
                    name = PurePosixPath(member.name)
                    if (
                        name.is_absolute()
                        or ".." in name.parts
                        or name.parts[:1] != ("rmm_agent",)
                        or not (member.isfile() or member.isdir())
                    ):
                        raise ReleaseRefused(REASON_ARTEFACT, f"the archive holds {member.name!r}")
                    member.mode = 0o755 if member.isdir() else 0o644
                    member.uid = member.gid = 0
                if not any(m.name == "rmm_agent/__main__.py" for m in members):
                    raise ReleaseRefused(REASON_ARTEFACT, "the archive holds no rmm_agent/__main__.py")
                tar.extractall(staging, members=members)  # noqa: S202 (every member checked above)
        except (tarfile.TarError, OSError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise ReleaseRefused(REASON_ARTEFACT, f"cannot unpack it: {exc}") from None
        except ReleaseRefused:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(target, ignore_errors=True)  # never the current one: the caller checked
        os.rename(staging, target)
        return target

    def swap(self, version: str) -> None:
        """Point ``current`` at ``versions/<version>`` with one rename (atomic)."""
        link = self.root / ".current.new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
        os.symlink(f"versions/{version}", link)
        os.replace(link, self.current)
        _fsync(self.root)

    def keep_only(self, *versions: str) -> None:
        """Remove every other version (the current and the previous one stay on disk)."""
        for path in self.versions.iterdir():
            if path.name not in versions and not path.name.startswith("."):
                shutil.rmtree(path, ignore_errors=True)


def _fsync(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the pending update -------------------------------------------------------------------------


def rollback_reason(pending: Mapping[str, Any], now: datetime) -> str | None:
    """Why a swapped-in version that has not confirmed its check-in must be rolled back, or None.
    Pure, so the supervisor and the unit's ExecStartPre decide alike."""
    if pending.get("rolled_back"):
        return None
    version = pending.get("to_version")
    if pending.get("starts", 0) >= MAX_STARTS:
        return f"version {version} ended {pending['starts']} times without checking in"
    deadline = datetime.fromtimestamp(pending.get("deadline", 0), tz=UTC)
    if now >= deadline:
        return f"version {version} did not check in within {pending.get('check_in_seconds')} s"
    return None
