"""Replay protection: a signed instruction is run (or refused) once, however often it comes back."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rmm_agent.agent import HeartbeatAnswer
from rmm_agent.protocol import iso_utc, sha256_hex
from rmm_agent.state import LEDGER_GRACE, StateDir

from .conftest import FakeServer, make_payload, sign
from .test_cli import agent, enroll
from .test_spool import make_agent


def posted_results(server: FakeServer, instruction_id: str) -> list[dict]:
    """Every result the agent sent for this instruction (the server keeps only the first)."""
    return [body for _, _, body in server.calls("/results/") if body.get("instruction_id") == instruction_id]


def counting_payload(counter: Path, **overrides: object) -> dict:
    # privileged: a root test run must not drop to `nobody`, who could not write the counter.
    return make_payload(f"echo run >> {counter}\necho done\n", privileged=True, **overrides)


def test_a_captured_instruction_replayed_later_is_refused_not_run(
    tmp_path: Path, fake_server: FakeServer, server_key: Ed25519PrivateKey
) -> None:
    state_dir = tmp_path / "agent"
    counter = tmp_path / "runs"
    assert enroll(fake_server, state_dir).returncode == 0
    payload = counting_payload(counter)
    captured = sign(payload, server_key)
    instruction_id = payload["instruction_id"]

    # Leased twice in one answer, then replayed in each of two later answers (new processes).
    fake_server.pending = [captured, captured]
    assert agent("run", "--state-dir", str(state_dir), "--once").returncode == 0
    for _ in range(2):
        fake_server.pending = [captured]
        done = agent("run", "--state-dir", str(state_dir), "--once")
        assert done.returncode == 0, done.stderr
        assert f"refused {instruction_id}: replayed" in done.stderr

    assert counter.read_text() == "run\n"
    first, *replays = posted_results(fake_server, instruction_id)
    assert (first["outcome"], first["exit_code"], first["stdout"]) == ("completed", 0, "done\n")
    assert [(r["outcome"], r["reason"], r["exit_code"], r["stdout"]) for r in replays] == [
        ("refused", "replayed", None, "")
    ] * 2

    ledger_path = state_dir / "handled.json"
    assert stat.S_IMODE(ledger_path.stat().st_mode) == 0o600
    assert json.loads(ledger_path.read_text()) == {instruction_id: payload["not_after"]}


def test_a_replayed_refusal_is_named_a_replay(
    tmp_path: Path, fake_server: FakeServer, server_key: Ed25519PrivateKey
) -> None:
    subject = make_agent(tmp_path, fake_server.url, server_key)
    payload = make_payload("echo x\n", content_sha256=sha256_hex(b"something else"))
    envelope = sign(payload, server_key)
    for expected in ("hash_mismatch", "replayed"):
        subject.handle(HeartbeatAnswer(ok=True, instructions=[envelope]))
        [result] = subject.state.spooled_results()
        assert (result["outcome"], result["reason"]) == ("refused", expected)
        assert subject.delivery.flush_spool()


def test_forged_instructions_are_reported_but_never_recorded(
    tmp_path: Path, fake_server: FakeServer, server_key: Ed25519PrivateKey
) -> None:
    """Nothing of an unsigned payload is trusted: its id must not enter (or grow) the ledger."""
    subject = make_agent(tmp_path, fake_server.url, server_key)
    forger = Ed25519PrivateKey.generate()
    own_key = sign("x", server_key)["key_id"]
    for forged, reason in (
        (sign(make_payload("echo forged\n"), forger), "unknown_key"),  # names the forger's key
        ({**sign(make_payload("echo forged\n"), forger), "key_id": own_key}, "bad_signature"),  # claims ours
    ):
        for _ in range(2):
            subject.handle(HeartbeatAnswer(ok=True, instructions=[forged]))
            [result] = subject.state.spooled_results()
            assert (result["outcome"], result["reason"]) == ("refused", reason)
            assert subject.delivery.flush_spool()
    assert subject.state.load_ledger() == {}


@pytest.mark.parametrize("signed", [True, False])
def test_an_id_that_is_not_a_safe_file_name_is_only_logged(
    tmp_path: Path, fake_server: FakeServer, server_key: Ed25519PrivateKey, signed: bool
) -> None:
    """An id like ``../../x`` would name a file outside the spool: it is refused and logged, never written."""
    subject = make_agent(tmp_path, fake_server.url, server_key)
    payload = make_payload("echo x\n", instruction_id="../../escaped")
    key = server_key if signed else Ed25519PrivateKey.generate()
    subject.handle(HeartbeatAnswer(ok=True, instructions=[sign(payload, key)]))
    assert subject.state.spooled_results() == []
    assert subject.state.load_ledger() == {}
    assert not list(tmp_path.rglob("escaped*"))


def test_an_instruction_that_cannot_be_recorded_is_not_run(
    tmp_path: Path,
    fake_server: FakeServer,
    server_key: Ed25519PrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    subject = make_agent(tmp_path, fake_server.url, server_key)
    counter = tmp_path / "runs"
    payload = counting_payload(counter)

    def full_disk(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(subject.state, "mark_handled", full_disk)
    subject.handle(HeartbeatAnswer(ok=True, instructions=[sign(payload, server_key)]))
    assert subject.running_ids() == []
    [result] = subject.state.spooled_results()
    assert (result["outcome"], result["reason"]) == ("error", "agent could not record it as handled")
    assert not counter.exists()


def test_the_ledger_forgets_what_has_long_expired(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.ensure()
    now = datetime.now(UTC)
    state.mark_handled("long-gone", now - LEDGER_GRACE - timedelta(seconds=1), now - timedelta(days=2))
    state.mark_handled("just-expired", now - timedelta(seconds=1), now - timedelta(days=2))
    state.mark_handled("valid", now + timedelta(hours=1), now - timedelta(days=2))
    (state.ledger_path).write_text(json.dumps({**state.load_ledger(), "junk": "not a time"}))

    state.mark_handled("new", now + timedelta(hours=2), now)
    assert state.load_ledger() == {
        "just-expired": iso_utc(now - timedelta(seconds=1)),
        "valid": iso_utc(now + timedelta(hours=1)),
        "new": iso_utc(now + timedelta(hours=2)),
    }
    assert not state.is_handled("long-gone")


def test_a_damaged_ledger_is_set_aside(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.ensure()
    state.ledger_path.write_text("{half")
    assert state.load_ledger() == {}
    assert state.ledger_path.with_suffix(".corrupt").exists()
