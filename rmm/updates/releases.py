"""Published agent releases: the artefact (a .tar.gz of ``rmm_agent``) by its sha256 and its
manifest signed by the newest release key, in ``RMM_RELEASE_DIR`` (default ``var/releases``).

Publishing signs; nothing else does. An agent verifies the manifest with the release keys it
pinned at enrollment (rmm_agent.release), so a server that can sign instructions but not
releases cannot make agents run other code of their own.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from django.conf import settings

from rmm.core.errors import InvalidInput
from rmm.keys import keyset
from rmm_agent import release


def release_dir() -> Path:
    return Path(settings.RMM_RELEASE_DIR)


def artefact_path(sha256: str) -> Path | None:
    """The published artefact of that digest, or None."""
    if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
        return None
    path = release_dir() / f"{sha256}.tar.gz"
    return path if path.is_file() else None


def publish(source: Path, version: str) -> dict:
    """Sign and publish an artefact as ``version``; returns its record (version, sha256, size,
    manifest). Publishing a version again replaces its record."""
    if not release.valid_version(version):
        raise InvalidInput(f"{version!r} is not a version.", field="version")
    digest = hashlib.sha256()
    with source.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    sha256, size = digest.hexdigest(), source.stat().st_size
    payload = release.manifest_payload(version, sha256, size)
    key_id, signature = keyset.current().sign(keyset.RELEASES, payload.encode())
    record = {
        "version": version,
        "sha256": sha256,
        "size": size,
        "manifest": {"payload": payload, "key_id": key_id, "signature": signature},
    }
    directory = release_dir()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{sha256}.tar.gz"
    if not target.exists():
        shutil.copyfile(source, target)
    fd, name = tempfile.mkstemp(dir=directory, prefix=".manifest.")
    with os.fdopen(fd, "w") as handle:
        json.dump(record, handle)
    os.replace(name, directory / f"{version}.json")
    return record


def find(version: str) -> dict:
    """The published record of ``version``, or InvalidInput."""
    path = release_dir() / f"{version}.json"
    if not release.valid_version(version) or not path.is_file():
        raise InvalidInput(f"No published agent release {version!r}.", field="version")
    return json.loads(path.read_text())
