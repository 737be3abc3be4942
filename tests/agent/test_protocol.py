"""Instruction verification and the shared hashes: the agent's trust boundary."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rmm_agent.facts import collect_facts
from rmm_agent.protocol import (
    INTERPRETERS,
    MAX_STREAM_BYTES,
    OUTCOMES,
    InstructionRefused,
    canonical_json,
    facts_hash,
    merge_diff,
    merge_patch,
    result_hash,
    sha256_hex,
    verify_instruction,
)

from .conftest import AGENT_ID, make_payload, sign, trusted

NOW = datetime.now(UTC)


def refusal(envelope: dict, key: dict[str, bytes], agent_id: str = AGENT_ID) -> InstructionRefused:
    with pytest.raises(InstructionRefused) as caught:
        verify_instruction(envelope, key, agent_id, NOW)
    return caught.value


def test_constants_match_the_contract() -> None:
    assert OUTCOMES == ("completed", "timed_out", "aborted", "refused", "error")
    assert INTERPRETERS == ("sh", "bash", "python", "powershell")
    assert MAX_STREAM_BYTES == 1024 * 1024


def test_good_envelope_returns_the_payload(server_key: Ed25519PrivateKey) -> None:
    payload = make_payload("echo ok\n", arguments=["a b"], privileged=True)
    verified = verify_instruction(sign(payload, server_key), trusted(server_key), AGENT_ID, NOW)
    assert verified == payload


def test_tampered_payload_byte_is_a_bad_signature(server_key: Ed25519PrivateKey) -> None:
    payload = make_payload("echo ok\n")
    envelope = sign(payload, server_key)
    envelope["payload"] = envelope["payload"].replace("echo ok", "echo OK")
    refused = refusal(envelope, trusted(server_key))
    assert refused.reason == "bad_signature"
    assert refused.instruction_id == payload["instruction_id"]  # best effort, for reporting


def test_signature_by_another_key_is_refused(server_key: Ed25519PrivateKey) -> None:
    payload = make_payload()
    envelope = {**sign(payload, Ed25519PrivateKey.generate()), "key_id": sign(payload, server_key)["key_id"]}
    assert refusal(envelope, trusted(server_key)).reason == "bad_signature"


def test_a_signature_names_its_key_and_an_unknown_or_missing_key_id_is_refused(
    server_key: Ed25519PrivateKey,
) -> None:
    payload = make_payload()
    other = Ed25519PrivateKey.generate()
    refused = refusal(sign(payload, other), trusted(server_key))  # a key this agent does not trust
    assert (refused.reason, refused.instruction_id) == ("unknown_key", payload["instruction_id"])
    envelope = sign(payload, server_key)
    del envelope["key_id"]
    assert refusal(envelope, trusted(server_key)).reason == "unknown_key"
    # Named as one trusted key but signed by another trusted key: the named key decides.
    envelope = {**sign(payload, other), "key_id": sign(payload, server_key)["key_id"]}
    assert refusal(envelope, trusted(server_key, other)).reason == "bad_signature"
    # Either trusted key verifies what it signed (the overlap of a rotation).
    assert verify_instruction(sign(payload, other), trusted(server_key, other), AGENT_ID, NOW) == payload


@pytest.mark.parametrize("signature", ["", "not base64!", base64.b64encode(b"short").decode(), None])
def test_malformed_signature_is_a_bad_signature(server_key: Ed25519PrivateKey, signature: str | None) -> None:
    envelope = sign(make_payload(), server_key)
    envelope["signature"] = signature
    assert refusal(envelope, trusted(server_key)).reason == "bad_signature"


def test_unparseable_payload_has_no_id(server_key: Ed25519PrivateKey) -> None:
    envelope = {**sign("x", server_key), "payload": "{not json"}
    refused = refusal(envelope, trusted(server_key))
    assert (refused.reason, refused.instruction_id) == ("bad_signature", None)


def test_instruction_for_another_agent_is_refused(server_key: Ed25519PrivateKey) -> None:
    payload = make_payload(agent_id="someone-else")
    refused = refusal(sign(payload, server_key), trusted(server_key))
    assert (refused.reason, refused.instruction_id) == (
        "wrong_agent",
        payload["instruction_id"],
    )


def test_content_hash_mismatch_is_refused(server_key: Ed25519PrivateKey) -> None:
    payload = make_payload("echo ok\n", content_sha256=sha256_hex(b"echo other\n"))
    refused = refusal(sign(payload, server_key), trusted(server_key))
    assert refused.reason == "hash_mismatch"


@pytest.mark.parametrize("delta", [timedelta(seconds=-1), timedelta(0)])
def test_expired_instruction_is_refused(server_key: Ed25519PrivateKey, delta: timedelta) -> None:
    not_after = (NOW + delta).isoformat().replace("+00:00", "Z")
    payload = make_payload(not_after=not_after)
    assert refusal(sign(payload, server_key), trusted(server_key)).reason == ("expired")


def test_not_after_with_offset_is_understood(server_key: Ed25519PrivateKey) -> None:
    payload = make_payload(not_after=(NOW + timedelta(minutes=5)).isoformat())
    key = trusted(server_key)
    assert verify_instruction(sign(payload, server_key), key, AGENT_ID, NOW) == payload


def test_unknown_interpreter_is_refused(server_key: Ed25519PrivateKey) -> None:
    payload = make_payload(interpreter="cmd")
    refused = refusal(sign(payload, server_key), trusted(server_key))
    assert refused.reason == "unsupported_interpreter"


def test_checks_run_in_contract_order(server_key: Ed25519PrivateKey) -> None:
    """Every check fails here; the first in the contract's order is the one reported."""
    payload = make_payload(
        agent_id="other",
        content_sha256="0" * 64,
        not_after="2000-01-01T00:00:00Z",
        interpreter="cmd",
    )
    key = trusted(server_key)
    assert refusal(sign(payload, server_key), key).reason == "wrong_agent"
    payload["agent_id"] = AGENT_ID
    assert refusal(sign(payload, server_key), key).reason == "hash_mismatch"
    payload["content_sha256"] = sha256_hex(payload["content"].encode())
    assert refusal(sign(payload, server_key), key).reason == "expired"
    payload["not_after"] = "2999-01-01T00:00:00Z"
    assert refusal(sign(payload, server_key), key).reason == "unsupported_interpreter"


@pytest.mark.parametrize(
    "overrides",
    [
        {"timeout_seconds": 0},
        {"timeout_seconds": "30"},
        {"arguments": "rm -rf /"},
        {"privileged": "yes"},
        {"instruction_id": "../../etc/passwd"},
    ],
)
def test_signed_but_unusable_fields_are_refused(server_key: Ed25519PrivateKey, overrides: dict) -> None:
    payload = make_payload(**overrides)
    refused = refusal(sign(payload, server_key), trusted(server_key))
    assert refused.reason == "malformed_payload"


def test_canonical_json_is_compact_sorted_utf8() -> None:
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


def result_fields() -> dict:
    return {
        "instruction_id": "i-1",
        "outcome": "completed",
        "exit_code": 0,
        "stdout": "out\n",
        "stderr": "",
        "stdout_truncated": False,
        "stderr_truncated": False,
    }


def test_result_hash_is_stable_and_covers_each_field() -> None:
    base = result_fields()
    expected = sha256_hex(canonical_json(base))
    assert result_hash(base) == expected
    # Extra keys (timestamps, reason, the hash itself) are outside the hash.
    assert result_hash({**base, "reason": "x", "started_at": "now", "hash": "h"}) == expected
    assert result_hash(dict(reversed(list(base.items())))) == expected
    changed = {
        "instruction_id": "i-2",
        "outcome": "error",
        "exit_code": 1,
        "stdout": "out",
        "stderr": "e",
        "stdout_truncated": True,
        "stderr_truncated": True,
    }
    for key, value in changed.items():
        assert result_hash({**base, key: value}) != expected, key
    assert result_hash({**base, "exit_code": None}) != expected


def test_result_hash_covers_containment_only_when_present() -> None:
    base = result_fields()
    assert result_hash(base) == sha256_hex(canonical_json(base)), "absent: hashed as before"
    killed = {"method": "cgroup", "killed": [{"pid": 7, "command": "sleep 987"}]}
    with_it = result_hash({**base, "containment": killed})
    assert with_it == sha256_hex(canonical_json({**base, "containment": killed}))
    assert with_it != result_hash({**base, "containment": {"method": "cgroup", "killed": []}})


def test_result_hash_covers_the_optional_fields_when_present() -> None:
    base = result_fields()
    expected = result_hash(base)
    optional = {
        "stdout_encoding": "utf-8",
        "stderr_encoding": "base64",
        "truncated_for_delivery": True,
        "original_hash": "0" * 64,
    }
    for key, value in optional.items():
        assert result_hash({**base, key: value}) != expected, key
    # An absent field is left out (the server requires the first seven: tests/engine/test_agent_input.py).
    del base["stderr"]
    assert result_hash(base) == sha256_hex(canonical_json(base))


def test_facts_hash_is_stable_and_changes_with_a_fact() -> None:
    facts = {"hostname": "web-1", "addresses": ["10.0.0.2"], "os": "Linux"}
    same = json.loads(json.dumps(dict(reversed(list(facts.items())))))
    assert facts_hash(facts) == facts_hash(same) == sha256_hex(canonical_json(facts))
    assert facts_hash({**facts, "hostname": "web-2"}) != facts_hash(facts)
    assert facts_hash({**facts, "addresses": ["10.0.0.3"]}) != facts_hash(facts)


def test_facts_the_server_could_not_store_are_sent_escaped() -> None:
    """A NUL or an undecodable name (a lone surrogate from the file system's decoding) in what
    the agent detected is written as an escape, so its facts are never refused (docs/agent.md)."""
    facts = collect_facts(hostname="web\x00\udcff")
    assert facts["hostname"] == "web\\x00\\udcff"
    assert "\x00" not in canonical_json(facts).decode()
    assert len(facts_hash(facts)) == 64


# RFC 7386, appendix A: (target, patch, result).
RFC_7386_EXAMPLES = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC_7386_EXAMPLES)
def test_merge_patch_follows_rfc_7386(target, patch, result) -> None:
    assert merge_patch(target, patch) == result


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"hostname": "a", "addresses": ["10.0.0.1"]}, {"hostname": "b", "addresses": ["10.0.0.1"]}),
        ({"a": 1, "gone": 2}, {"a": 1, "new": [1, 2]}),
        ({"a": {"x": 1, "y": 2}}, {"a": {"x": 1, "z": 3}}),
        ({"a": 1}, {"a": True}),  # equal in Python, not in JSON: still patched
        ({"a": "x"}, {"a": {"nested": "y"}}),
    ],
)
def test_a_merge_diff_patches_the_old_body_into_the_new(old, new) -> None:
    patch = merge_diff(old, new)
    assert merge_patch(old, patch) == new
    assert facts_hash(merge_patch(old, patch)) == facts_hash(new)
    assert "addresses" not in patch or old.get("addresses") != new["addresses"]


def test_no_merge_diff_gives_a_null_value_so_such_a_body_travels_whole() -> None:
    assert merge_diff({"boot_time": "x"}, {"boot_time": None}) is None
    assert merge_diff({}, {"a": {"b": None}}) is None
    assert merge_diff({"a": 1}, {"a": 1}) == {}
