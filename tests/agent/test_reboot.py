"""A step that reboots, from the agent's side against FakeServer: the agent notes the step in
reboot.json before its result, reports it with ``reboot: true``, runs its reboot command and
takes no more work; started again on the same state dir, it says it came back (only once the
step's result left its spool) until the server answered, then forgets the note. Every
heartbeat names the agent's capabilities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rmm_agent.agent import Agent
from rmm_agent.protocol import CAPABILITIES, CAPABILITY_SELF_UPDATE

from .conftest import FakeServer, make_payload, sign
from .test_spool import make_agent


@pytest.fixture
def mark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the simulated reboot command leaves its mark."""
    path = tmp_path / "rebooted"
    monkeypatch.setenv("RMM_AGENT_REBOOT_COMMAND", f"touch {path}")
    return path


def test_a_reboot_step_is_noted_reported_and_done_and_the_return_is_said_once(
    tmp_path: Path, server_key: Ed25519PrivateKey, fake_server: FakeServer, mark: Path
) -> None:
    agent = make_agent(tmp_path, fake_server.url, server_key)
    payload = make_payload("exit 0\n", reboot="now")
    fake_server.pending = [sign(payload, server_key)]
    assert agent.run_once() == 0
    assert mark.exists()
    assert fake_server.results[payload["instruction_id"]]["reboot"] is True
    assert json.loads(agent.state.reboot_path.read_text())["instruction_id"] == payload["instruction_id"]
    assert agent.heartbeat().ok
    before = fake_server.heartbeats()
    # run from a checkout, not a versioned install: it cannot update itself, and says so
    assert before[0]["capabilities"] == [name for name in CAPABILITIES if name != CAPABILITY_SELF_UPDATE]
    assert before[-1]["capacity"] == 0 and "rebooted" not in before[-1]  # the same process: not back yet

    back = Agent(agent.state, agent.config)  # the agent's process started again
    assert back.heartbeat().ok and back.heartbeat().ok
    said = [body.get("rebooted") for body in fake_server.heartbeats()[len(before) :]]
    assert said == [payload["instruction_id"], None]
    assert fake_server.heartbeats()[-1]["capacity"] > 0
    assert not agent.state.reboot_path.exists()


def test_the_return_waits_until_the_step_s_result_is_delivered(
    tmp_path: Path, server_key: Ed25519PrivateKey, fake_server: FakeServer
) -> None:
    agent = make_agent(tmp_path, fake_server.url, server_key)
    agent.state.save_reboot({"instruction_id": "i-1"})
    agent.state.spool_result({"instruction_id": "i-1", "outcome": "completed", "hash": "x"})
    back = Agent(agent.state, agent.config)
    assert back.heartbeat().ok
    assert "rebooted" not in fake_server.heartbeats()[-1]
    agent.state.discard_spooled("i-1")
    assert back.heartbeat().ok
    assert fake_server.heartbeats()[-1]["rebooted"] == "i-1"


def test_a_failed_reboot_step_reboots_nothing(
    tmp_path: Path, server_key: Ed25519PrivateKey, fake_server: FakeServer, mark: Path
) -> None:
    agent = make_agent(tmp_path, fake_server.url, server_key)
    payload = make_payload("exit 3\n", reboot="now")
    fake_server.pending = [sign(payload, server_key)]
    assert agent.run_once() == 0
    assert fake_server.results[payload["instruction_id"]]["reboot"] is False
    assert not mark.exists() and not agent.state.reboot_path.exists()
