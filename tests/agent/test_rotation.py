"""Secret rotation: a new secret is durably stored before it is used, and a lost one is harmless."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rmm_agent.agent import Agent
from rmm_agent.client import Client
from rmm_agent.results import make_result

from .conftest import AGENT_ID, SECRET, FakeServer, fail_writes_to, make_payload, sign
from .test_cli import agent, enroll
from .test_spool import make_agent

HEARTBEAT = "/heartbeat/"
RESULTS = "/results/"


def config_of(state_dir: Path) -> dict:
    return json.loads((state_dir / "config.json").read_text())


def status_with(server: FakeServer, secret: str) -> int:
    """What the server answers a heartbeat made with ``secret``."""
    client = Client(server.url, agent_id=AGENT_ID, secret=secret)
    return client.heartbeat({"running": [], "capacity": 0}).status


def test_rotated_secret_is_stored_then_used_for_every_later_call(
    tmp_path: Path, fake_server: FakeServer, server_key: Ed25519PrivateKey
) -> None:
    state_dir = tmp_path / "agent"
    assert enroll(fake_server, state_dir).returncode == 0
    before = config_of(state_dir)
    fake_server.rotate = True
    payload = make_payload("echo rotated\n")
    fake_server.pending = [sign(payload, server_key)]

    done = agent("run", "--state-dir", str(state_dir), "--once")
    assert done.returncode == 0, done.stderr
    [new_secret] = fake_server.issued_secrets

    # Stored, privately, with nothing else in the config changed and no temp file left behind.
    config_path = state_dir / "config.json"
    assert config_of(state_dir) == {**before, "secret": new_secret}
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    assert not [name for name in os.listdir(state_dir) if name.endswith(".tmp")]
    assert "agent secret rotated" in done.stderr
    assert new_secret not in done.stderr and SECRET not in done.stderr

    # The heartbeat that brought it was the last call with the old secret: the result that
    # followed in the same run already used the new one, which completed the rotation.
    used = [(path.rsplit("/", 2)[1], secret) for path, secret, _ in fake_server.calls()]
    assert used == [("heartbeat", SECRET), ("results", new_secret)]
    assert fake_server.results[payload["instruction_id"]]["stdout"] == "rotated\n"
    assert (fake_server.secret, fake_server.pending_secret, fake_server.rotate) == (new_secret, None, False)

    # The next run starts with the stored secret; the old one is dead now.
    done = agent("run", "--state-dir", str(state_dir), "--once")
    assert done.returncode == 0, done.stderr
    assert fake_server.calls(HEARTBEAT)[-1][1] == new_secret
    assert fake_server.issued_secrets == [new_secret]
    assert status_with(fake_server, SECRET) == 401


def test_a_secret_that_could_not_be_stored_is_never_used(
    tmp_path: Path,
    fake_server: FakeServer,
    server_key: Ed25519PrivateKey,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The answer arrives but writing config.json fails (a full disk, or a crash before the
    rename): the old secret stays in use and keeps working, and a later heartbeat rotates."""
    subject = make_agent(tmp_path, fake_server.url, server_key)
    config_path = subject.state.config_path
    fail_writes_to(monkeypatch, config_path)
    fake_server.rotate = True
    with caplog.at_level(logging.ERROR, logger="rmm_agent"):
        assert subject.heartbeat().ok
    [lost] = fake_server.issued_secrets
    assert "could not store the rotated secret" in caplog.text
    assert lost not in caplog.text
    assert json.loads(config_path.read_text())["secret"] == SECRET
    assert subject.client.secret == SECRET == subject.config["secret"]

    # Still the old secret, and still accepted: delivering a result works.
    subject.state.spool_result(make_result("after-failure", "completed", exit_code=0))
    assert subject.delivery.flush_spool() is True
    assert fake_server.calls(RESULTS)[-1][1] == SECRET

    # The agent "restarts" from what is on disk, and this time the write succeeds.
    monkeypatch.undo()  # space again
    restarted = Agent(subject.state, subject.state.load_config())
    assert restarted.heartbeat().ok
    assert fake_server.calls(HEARTBEAT)[-1][1] == SECRET
    [_, fresh] = fake_server.issued_secrets
    assert fresh != lost
    assert json.loads(config_path.read_text())["secret"] == fresh
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600

    assert restarted.heartbeat().ok
    assert fake_server.calls(HEARTBEAT)[-1][1] == fresh
    assert fake_server.secret == fresh
    assert status_with(fake_server, SECRET) == 401
    assert status_with(fake_server, lost) == 401


@pytest.mark.parametrize("bad", ["short", "has space in it 0123456789", "line\r\nX-Injected: 1 0123456789", 42])
def test_an_unusable_new_secret_is_ignored(
    tmp_path: Path, fake_server: FakeServer, server_key: Ed25519PrivateKey, bad: object
) -> None:
    subject = make_agent(tmp_path, fake_server.url, server_key)
    fake_server.override["/api/v1/agent/heartbeat/"] = (200, {"interval": 1, "new_secret": bad}, {})
    assert subject.heartbeat().ok
    assert subject.client.secret == SECRET
    assert json.loads(subject.state.config_path.read_text())["secret"] == SECRET
