"""Signing-key rotation as the agent sees it: a new key is trusted only through a statement signed by
a key it already trusts, stored durably before use, and a chain of statements catches up an agent
that missed rotations. Anything else is refused and logged, and the keys stay as they were."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rmm_agent import keyring
from rmm_agent.agent import Agent

from .conftest import FakeServer, fail_writes_to, make_payload, raw_public_key, sign, trusted
from .test_cli import agent, enroll
from .test_spool import make_agent

PURPOSE = "instructions"


def rotation(previous: Ed25519PrivateKey, new: Ed25519PrivateKey, sequence: int = 2, purpose: str = PURPOSE) -> dict:
    """A rotation statement as the server makes it (rmm/keys/services.py)."""
    text = keyring.rotation_payload(
        purpose, sequence, raw_public_key(previous), raw_public_key(new), "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z"
    )
    return {
        "payload": text,
        "key_id": keyring.key_id(raw_public_key(previous)),
        "signature": keyring.b64(previous.sign(text.encode())),
        "new_key_signature": keyring.b64(new.sign(text.encode())),
    }


def retirement(retired: Ed25519PrivateKey, signer: Ed25519PrivateKey) -> dict:
    text = keyring.retirement_payload(PURPOSE, keyring.key_id(raw_public_key(retired)), "2026-01-02T00:00:00Z")
    return {
        "payload": text,
        "key_id": keyring.key_id(raw_public_key(signer)),
        "signature": keyring.b64(signer.sign(text.encode())),
    }


@pytest.fixture
def keys() -> list[Ed25519PrivateKey]:
    return [Ed25519PrivateKey.generate() for _ in range(4)]


def test_a_chain_of_rotations_is_followed_from_the_key_held(keys) -> None:
    k1, k2, k3, _ = keys
    update = {"rotations": [rotation(k1, k2), rotation(k2, k3, 3)], "retirements": [retirement(k1, k2)]}
    now, refused = keyring.apply_update(trusted(k1), update, PURPOSE)
    assert refused == []
    assert now == trusted(k2, k3)


@pytest.mark.parametrize(
    "forge",
    [
        "signed by a key not trusted",
        "new key did not sign",
        "another purpose",
        "key id altered",
        "payload altered",
    ],
)
def test_a_rotation_not_signed_by_a_trusted_key_is_refused(keys, forge: str) -> None:
    k1, k2, forger, k4 = keys
    statement = {
        "signed by a key not trusted": lambda: rotation(forger, k4),
        "new key did not sign": lambda: {
            **rotation(k1, k4),
            "new_key_signature": rotation(k1, k2)["new_key_signature"],
        },
        "another purpose": lambda: rotation(k1, k4, purpose="evidence"),
        "key id altered": lambda: {**rotation(forger, k4), "key_id": keyring.key_id(raw_public_key(k1))},
        "payload altered": lambda: {
            **rotation(k1, k2),
            "payload": rotation(k1, k2)["payload"].replace(
                keyring.b64(raw_public_key(k2)), keyring.b64(raw_public_key(k4))
            ),
        },
    }[forge]()
    now, refused = keyring.apply_update(trusted(k1), {"rotations": [statement, rotation(k2, k4, 3)]}, PURPOSE)
    assert now == trusted(k1)  # nothing learnt: the chain stops at the refused statement
    assert len(refused) == 1 and refused[0].startswith("rotation: ")


def test_a_retirement_needs_a_newer_trusted_key_and_never_empties_the_keys(keys) -> None:
    k1, k2, forger, _ = keys
    for statement in (retirement(k1, k1), retirement(k1, forger)):
        now, refused = keyring.apply_update(trusted(k1, k2), {"retirements": [statement]}, PURPOSE)
        assert now == trusted(k1, k2) and len(refused) == 1
    now, refused = keyring.apply_update(
        trusted(k1, k2), {"retirements": [retirement(k1, k2), retirement(k2, k1)]}, PURPOSE
    )
    assert now == trusted(k1, k2)  # both retired by the other: the agent keeps what it has, not nothing
    assert refused == []


def make_enrolled(fake_server: FakeServer, tmp_path: Path) -> tuple[Path, dict]:
    state_dir = tmp_path / "agent"
    assert enroll(fake_server, state_dir).returncode == 0
    return state_dir, json.loads((state_dir / "config.json").read_text())


def test_the_agent_stores_a_rotated_key_then_runs_what_it_signs(
    tmp_path: Path, fake_server: FakeServer, server_key: Ed25519PrivateKey, keys
) -> None:
    new = keys[0]
    state_dir, before = make_enrolled(fake_server, tmp_path)
    assert before["server_keys"] == {sign("x", server_key)["key_id"]: before["server_public_key"]}
    fake_server.signing_keys = {"rotations": [rotation(server_key, new)], "retirements": []}
    fake_server.pending = [sign(make_payload("echo under the new key\n"), new)]

    done = agent("run", "--state-dir", str(state_dir), "--once")
    assert done.returncode == 0, done.stderr

    config_path = state_dir / "config.json"
    after = json.loads(config_path.read_text())
    assert after == {
        **before,
        "server_keys": {**before["server_keys"], sign("x", new)["key_id"]: keyring.b64(raw_public_key(new))},
    }
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    assert not [name for name in os.listdir(state_dir) if name.endswith(".tmp")]
    [result] = fake_server.results.values()
    assert (result["outcome"], result["stdout"]) == ("completed", "under the new key\n")
    # Every heartbeat says which keys the agent holds: the server signs with the newest of them.
    assert fake_server.heartbeats()[0]["key_ids"] == sorted(before["server_keys"])
    assert agent("run", "--state-dir", str(state_dir), "--once").returncode == 0
    assert fake_server.heartbeats()[-1]["key_ids"] == sorted(after["server_keys"])


def test_a_forged_rotation_is_refused_logged_and_its_key_never_trusted(
    tmp_path: Path, fake_server: FakeServer, server_key: Ed25519PrivateKey, keys
) -> None:
    forger, evil = keys[0], keys[1]
    state_dir, before = make_enrolled(fake_server, tmp_path)
    fake_server.signing_keys = {"rotations": [rotation(forger, evil)], "retirements": []}
    payload = make_payload("echo forged\n")
    fake_server.pending = [sign(payload, evil)]

    done = agent("run", "--state-dir", str(state_dir), "--once")
    assert done.returncode == 0, done.stderr
    assert "refused a signing key statement from the server" in done.stderr
    assert json.loads((state_dir / "config.json").read_text()) == before
    result = fake_server.results[payload["instruction_id"]]
    assert (result["outcome"], result["reason"]) == ("refused", "unknown_key")


def test_a_key_that_cannot_be_stored_is_not_trusted(
    tmp_path: Path,
    fake_server: FakeServer,
    server_key: Ed25519PrivateKey,
    keys,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Like a rotated secret: trusted only once durably in config.json (here the disk is full);
    the agent keeps reporting the keys it holds, so the server sends the statement again."""
    subject = make_agent(tmp_path, fake_server.url, server_key)
    config_path = subject.state.config_path
    fail_writes_to(monkeypatch, config_path)
    fake_server.signing_keys = {"rotations": [rotation(server_key, keys[0])], "retirements": []}
    with caplog.at_level(logging.ERROR, logger="rmm_agent"):
        assert subject.heartbeat().ok
    assert "could not store the server's signing keys" in caplog.text
    assert subject.server_keys == trusted(server_key)
    assert "server_keys" not in json.loads(config_path.read_text())

    monkeypatch.undo()  # space again
    assert subject.heartbeat().ok
    assert fake_server.heartbeats()[-1]["key_ids"] == sorted(trusted(server_key))
    assert subject.server_keys == trusted(server_key, keys[0])
    assert Agent(subject.state, subject.state.load_config()).server_keys == trusted(server_key, keys[0])
