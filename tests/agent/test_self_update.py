"""Signed self-update: the manifest, the swap and the rollback decision, then the real agent under
its supervisor updating itself in a versioned install, rolling back a build that cannot check in,
and refusing a build signed by a key it did not pin."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rmm_agent import __version__, keyring, release
from rmm_agent.protocol import CAPABILITIES
from rmm_agent.release import Install, ReleaseRefused

from .conftest import AGENT_CMD, REPO_ROOT, TOKEN, FakeServer, make_payload, sign, trusted

RELEASE_KEY = Ed25519PrivateKey.generate()
NEW = "99.0.0"


def artefact(version: str, main: str | None = None) -> bytes:
    """A release artefact: this checkout's rmm_agent with ``version`` (and, given, another
    entry point), as a .tar.gz."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted((REPO_ROOT / "rmm_agent").glob("*.py")):
            data = path.read_bytes()
            if path.name == "__init__.py":
                data = data.replace(f'__version__ = "{__version__}"'.encode(), f'__version__ = "{version}"'.encode())
            if path.name == "__main__.py" and main is not None:
                data = main.encode()
            info = tarfile.TarInfo(f"rmm_agent/{path.name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def manifest(data: bytes, version: str, key: Ed25519PrivateKey = RELEASE_KEY) -> dict:
    text = release.manifest_payload(version, hashlib.sha256(data).hexdigest(), len(data))
    return {"payload": text, "key_id": next(iter(trusted(key))), "signature": keyring.b64(key.sign(text.encode()))}


def test_version_prints_the_one_version():
    done = subprocess.run([*AGENT_CMD, "--version"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == f"rmm_agent {__version__}"


# --- units --------------------------------------------------------------------------------------


def test_a_manifest_verifies_with_the_pinned_release_key_only():
    data = artefact(NEW)
    signed = release.verify_manifest(manifest(data, NEW), trusted(RELEASE_KEY))
    assert (signed["version"], signed["size"]) == (NEW, len(data))
    other = Ed25519PrivateKey.generate()
    with pytest.raises(ReleaseRefused, match="not a pinned release key") as refused:
        release.verify_manifest(manifest(data, NEW, other), trusted(RELEASE_KEY))
    assert refused.value.reason == release.REASON_RELEASE_KEY
    forged = dict(manifest(data, NEW), key_id=next(iter(trusted(RELEASE_KEY))))  # its id, another's signature
    forged["signature"] = manifest(data, NEW, other)["signature"]
    with pytest.raises(ReleaseRefused, match="does not verify"):
        release.verify_manifest(forged, trusted(RELEASE_KEY))


def test_an_artefact_must_be_the_one_the_manifest_signs(tmp_path):
    data = artefact(NEW)
    signed = release.verify_manifest(manifest(data, NEW), trusted(RELEASE_KEY))
    path = tmp_path / "a.tar.gz"
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ReleaseRefused, match="sha256"):
        release.check_artefact(path, signed)
    path.write_bytes(data + b"x")
    with pytest.raises(ReleaseRefused, match="bytes"):
        release.check_artefact(path, signed)


def test_the_swap_replaces_the_link_in_one_rename(tmp_path, monkeypatch):
    install = Install(tmp_path)
    for version in ("1", "2"):
        (tmp_path / "versions" / version).mkdir(parents=True)
    install.swap("1")
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renames.append((a, b)), real_replace(a, b)))
    install.swap("2")
    assert renames == [(tmp_path / ".current.new", tmp_path / "current")]
    assert install.current_version() == "2" and not (tmp_path / ".current.new").exists()


def test_unpack_refuses_what_is_not_the_agent_package(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("rmm_agent/../../escape.py")
        tar.addfile(info, io.BytesIO(b""))
    (tmp_path / "bad.tar.gz").write_bytes(buffer.getvalue())
    with pytest.raises(ReleaseRefused, match="escape"):
        Install(tmp_path).unpack(tmp_path / "bad.tar.gz", NEW)
    assert not (tmp_path / "versions" / NEW).exists() and not (tmp_path.parent / "escape.py").exists()


def test_rollback_when_the_new_version_had_its_chance():
    now = datetime.now(UTC)
    pending = {"to_version": NEW, "starts": 1, "check_in_seconds": 60, "deadline": (now + timedelta(60)).timestamp()}
    assert release.rollback_reason(pending, now) is None
    assert "did not check in within 60 s" in release.rollback_reason(pending, now + timedelta(days=61))
    assert "ended 3 times" in release.rollback_reason(dict(pending, starts=release.MAX_STARTS), now)
    assert release.rollback_reason(dict(pending, starts=9, rolled_back="done"), now) is None


# --- the real agent under its supervisor ----------------------------------------------------------


@pytest.fixture
def installed(tmp_path, fake_server: FakeServer):
    """A versioned install of this checkout's agent, enrolled with the fake server (which pins
    RELEASE_KEY), run by ``supervise``; stopped after the test."""
    fake_server.release_key = RELEASE_KEY
    root = tmp_path / "opt"
    (root / "versions").mkdir(parents=True)
    shutil.copytree(REPO_ROOT / "rmm_agent", root / "versions" / __version__ / "rmm_agent")
    Install(root).swap(__version__)
    state = tmp_path / "state"
    env = {**os.environ, "PYTHONPATH": str(root / "current")}
    enroll = [*AGENT_CMD, "enroll", "--server", fake_server.url, "--token", TOKEN, "--state-dir", str(state)]
    subprocess.run([*enroll, "--run-as", "nobody"], env=env, check=True, capture_output=True)
    supervisor = subprocess.Popen(
        [*AGENT_CMD, "supervise", "--state-dir", str(state), "--root", str(root), "--restart-seconds", "0.2"],
        env=env,
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    yield root, fake_server
    supervisor.send_signal(signal.SIGTERM)
    try:
        supervisor.wait(timeout=20)
    except subprocess.TimeoutExpired:
        supervisor.kill()


def update(server: FakeServer, data: bytes, version: str, key: Ed25519PrivateKey = RELEASE_KEY) -> str:
    """Queue a signed update order for ``version`` with this artefact; its instruction id."""
    server.files["/releases/a.tar.gz"] = data
    order = {"version": version, "url": "/releases/a.tar.gz", "manifest": manifest(data, version, key)}
    order["check_in_seconds"] = 8
    content = json.dumps(order, sort_keys=True)
    payload = make_payload(content, interpreter="agent_update", timeout_seconds=300)
    server.pending.append(sign(payload, server.private_key))
    return payload["instruction_id"]


def result_of(server: FakeServer, instruction_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with server.lock:
            if instruction_id in server.results:
                return server.results[instruction_id]
        time.sleep(0.2)
    raise AssertionError(f"no result for {instruction_id}; heartbeats: {server.heartbeats()[-2:]}")


def test_the_agent_updates_itself_to_a_signed_build(installed):
    root, server = installed
    instruction_id = update(server, artefact(NEW), NEW)
    result = result_of(server, instruction_id)
    assert (result["outcome"], result["exit_code"]) == ("completed", 0)
    assert f"updated from {__version__} to {NEW}" in result["stdout"]
    assert Install(root).current_version() == NEW
    assert (root / "versions" / __version__ / "rmm_agent").is_dir()  # the previous one stays
    last = server.heartbeats()[-1]
    assert last["agent_version"] == NEW and last["capabilities"] == list(CAPABILITIES)  # self_update among them


def test_a_build_that_cannot_check_in_is_rolled_back(installed):
    root, server = installed
    instruction_id = update(server, artefact(NEW, main="import sys\nsys.exit(1)\n"), NEW)
    result = result_of(server, instruction_id)
    assert result["outcome"] == "error"
    assert f"update to {NEW} rolled back to {__version__}: version {NEW} ended 3 times" in result["reason"]
    assert Install(root).current_version() == __version__
    assert not (root / "versions" / NEW).exists()
    assert server.heartbeats()[-1]["agent_version"] == __version__


def test_a_build_signed_by_another_key_is_refused_and_nothing_swapped(installed):
    root, server = installed
    instruction_id = update(server, artefact(NEW), NEW, key=Ed25519PrivateKey.generate())
    result = result_of(server, instruction_id)
    assert result["outcome"] == "refused"
    assert result["reason"].startswith("release_signature: signed by key")
    assert Install(root).current_version() == __version__
    assert sorted(p.name for p in (root / "versions").iterdir()) == [__version__]
