"""Results are never lost: spooled first, deleted only on a definitive server answer."""

from __future__ import annotations

import base64
import json
import stat
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rmm_agent.agent import Agent
from rmm_agent.results import make_result
from rmm_agent.state import StateDir

from .conftest import AGENT_ID, SECRET, FakeServer, closed_port, raw_public_key


def make_agent(tmp_path: Path, server: str, server_key: Ed25519PrivateKey) -> Agent:
    state = StateDir(tmp_path / "state")
    config = {
        "server": server,
        "agent_id": AGENT_ID,
        "asset_id": 1,
        "secret": SECRET,
        "server_public_key": base64.b64encode(raw_public_key(server_key)).decode(),
        "heartbeat_interval": 1,
        "run_as": "nobody",
        "ca_file": None,
        "hostname": "spool-test",
    }
    state.save_config(config)
    state.ensure()
    return Agent(state, config)


def test_result_survives_an_unreachable_server(tmp_path: Path, server_key: Ed25519PrivateKey) -> None:
    agent = make_agent(tmp_path, f"http://127.0.0.1:{closed_port()}", server_key)
    result = make_result("instr-1", "completed", exit_code=0, stdout="hi\n")
    agent.state.spool_result(result)

    assert agent.delivery.flush_spool() is False
    assert agent.state.spooled_results() == [result]
    path = agent.state.spool_path("instr-1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == result


def test_spooled_result_is_delivered_then_deleted(
    tmp_path: Path, server_key: Ed25519PrivateKey, fake_server: FakeServer
) -> None:
    agent = make_agent(tmp_path, fake_server.url, server_key)
    fake_server.issued.add("instr-2")  # leased to this agent before
    result = make_result("instr-2", "completed", exit_code=1, stderr="boom")
    agent.state.spool_result(result)

    assert agent.delivery.flush_spool() is True
    assert fake_server.results["instr-2"] == result
    assert agent.state.spooled_results() == []


@pytest.mark.parametrize(
    ("status", "kept"),
    [(500, True), (503, True), (429, True), (400, True), (413, True), (404, False), (409, False), (200, False)],
)
def test_only_definitive_answers_remove_a_result(
    tmp_path: Path, server_key: Ed25519PrivateKey, fake_server: FakeServer, status: int, kept: bool
) -> None:
    agent = make_agent(tmp_path, fake_server.url, server_key)
    fake_server.override["/api/v1/agent/results/"] = (status, {"detail": "x"}, {"Retry-After": "1"})
    agent.state.spool_result(make_result("instr-3", "error", reason="could not start"))

    agent.delivery.flush_spool()
    assert agent.state.is_spooled("instr-3") is kept


def test_a_result_answered_503_is_not_sent_again_before_retry_after(
    tmp_path: Path, server_key: Ed25519PrivateKey, fake_server: FakeServer
) -> None:
    """The server cannot store it now (its database or evidence store is down): the result stays
    spooled, and the agent waits for Retry-After before it sends results again."""
    agent = make_agent(tmp_path, fake_server.url, server_key)
    fake_server.override["/api/v1/agent/results/"] = (503, {"detail": "store down"}, {"Retry-After": "0.5"})
    agent.state.spool_result(make_result("instr-4", "completed", exit_code=0))
    assert agent.delivery.flush_spool() is False
    assert agent.delivery.flush_spool() is False  # within Retry-After: nothing sent
    assert len(fake_server.calls("/results/")) == 1
    del fake_server.override["/api/v1/agent/results/"]
    time.sleep(0.6)
    assert agent.delivery.flush_spool() is True
    assert len(fake_server.calls("/results/")) == 2 and not agent.state.is_spooled("instr-4")


def test_corrupt_spool_file_is_set_aside(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.ensure()
    (state.spool_dir / "broken.json").write_text("{half")
    state.spool_result(make_result("ok-1", "completed", exit_code=0))
    assert [r["instruction_id"] for r in state.spooled_results()] == ["ok-1"]
    assert (state.spool_dir / "broken.corrupt").exists()
