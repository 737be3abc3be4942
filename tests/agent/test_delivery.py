"""A result the server refuses is never dropped: it is kept and sent again, smaller each time,
saying so under its hash (issue 11, defect 3)."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rmm_agent.protocol import DELIVERY_STREAM_BYTES, MAX_BODY_BYTES, decode_stream, encode_body, result_hash
from rmm_agent.results import make_result

from .conftest import FakeServer
from .test_spool import make_agent

NOISY = bytes(range(256)) * 4096  # 1 MiB of every byte value: sent as base64


def sent_results(server: FakeServer) -> list[dict]:
    return [body for path, _, body in server.calls("/results/")]


def stream(result: dict, name: str) -> bytes:
    return decode_stream(result[name], result.get(f"{name}_encoding"))


def test_a_full_result_fits_the_bound_after_encoding() -> None:
    for data in (b"\n" * (1 << 20), b"\x00" * (1 << 20), b"\x01" * (1 << 20), NOISY, "😀".encode() * (1 << 18)):
        result = make_result("i-1", "completed", exit_code=0, stdout=data, stderr=data, reason="\x01" * 5000)
        assert len(encode_body(result)) <= MAX_BODY_BYTES
        assert (stream(result, "stdout"), stream(result, "stderr")) == (data, data)
        assert result["stdout_truncated"] is False
        assert result["hash"] == result_hash(result)


def test_a_result_larger_than_the_bound_is_cut_to_fit_and_says_so() -> None:
    result = make_result("i-1", "completed", exit_code=0, stdout=b"a" * (6 << 20), stderr=b"e\n")
    assert len(encode_body(result)) <= MAX_BODY_BYTES
    assert result["stdout_truncated"] is True and result["stderr_truncated"] is False
    assert stream(result, "stdout") == b"a" * len(stream(result, "stdout"))
    assert stream(result, "stderr") == b"e\n"


def test_a_result_a_proxy_refuses_as_too_large_is_resent_truncated(
    tmp_path: Path, server_key: Ed25519PrivateKey, fake_server: FakeServer
) -> None:
    fake_server.max_body = 256 * 1024  # an nginx-like limit in front of the server
    agent = make_agent(tmp_path, fake_server.url, server_key)
    fake_server.issued.add("big-1")  # leased to this agent before
    first = make_result("big-1", "completed", exit_code=3, stdout=NOISY, stderr=b"oops\n", reason="done")
    agent.state.spool_result(first)

    assert agent.delivery.flush_spool() is True
    assert agent.state.spooled_results() == []
    [refused] = [body for path, _, body in fake_server.requests if "refused_bytes" in body]
    assert refused["refused_bytes"] > fake_server.max_body
    delivered = fake_server.results["big-1"]
    assert delivered["truncated_for_delivery"] is True
    assert delivered["original_hash"] == first["hash"]
    assert delivered["hash"] == result_hash(delivered) != first["hash"]
    assert stream(delivered, "stdout") == NOISY[:DELIVERY_STREAM_BYTES]
    assert delivered["stdout_truncated"] is True
    assert stream(delivered, "stderr") == b"oops\n" and delivered["stderr_truncated"] is False
    assert (delivered["outcome"], delivered["exit_code"], delivered["reason"]) == ("completed", 3, "done")


def test_a_result_refused_again_and_again_is_cut_to_nothing_then_kept(
    tmp_path: Path, server_key: Ed25519PrivateKey, fake_server: FakeServer
) -> None:
    fake_server.override["/api/v1/agent/results/"] = (400, {"stdout": ["no"]}, {})
    agent = make_agent(tmp_path, fake_server.url, server_key)
    fake_server.issued.add("stubborn")  # leased to this agent before
    first = make_result("stubborn", "completed", exit_code=0, stdout=b"x" * 100_000, stderr=b"y")
    agent.state.spool_result(first)

    assert agent.delivery.flush_spool() is False
    attempts = sent_results(fake_server)
    assert [len(stream(r, "stdout")) for r in attempts] == [100_000, DELIVERY_STREAM_BYTES, 0]
    assert [r.get("truncated_for_delivery") for r in attempts] == [None, True, True]
    assert {r.get("original_hash") for r in attempts[1:]} == {first["hash"]}
    [kept] = agent.state.spooled_results()
    assert kept == attempts[-1]  # never dropped: still waiting, as small as it gets
    assert (kept["outcome"], kept["exit_code"]) == ("completed", 0)

    # The server is mended: the kept result is delivered at the next pass.
    del fake_server.override["/api/v1/agent/results/"]
    assert agent.delivery.flush_spool() is True
    assert fake_server.results["stubborn"]["original_hash"] == first["hash"]


def test_an_answer_of_not_this_agents_or_already_received_lets_it_go(
    tmp_path: Path, server_key: Ed25519PrivateKey, fake_server: FakeServer
) -> None:
    agent = make_agent(tmp_path, fake_server.url, server_key)
    for status in (404, 409):
        fake_server.override["/api/v1/agent/results/"] = (status, {"detail": "no"}, {})
        agent.state.spool_result(make_result(f"gone-{status}", "completed", exit_code=0))
        assert agent.delivery.flush_spool() is True
        assert agent.state.spooled_results() == []
    assert len(sent_results(fake_server)) == 2  # sent once each, never truncated


def test_a_spooled_result_from_before_the_encodings_is_resent_as_it_was(
    tmp_path: Path, server_key: Ed25519PrivateKey, fake_server: FakeServer
) -> None:
    """A result an older agent spooled (text streams, no encoding fields) is delivered unchanged."""
    agent = make_agent(tmp_path, fake_server.url, server_key)
    fake_server.issued.add("old-1")  # leased to this agent before
    old = {
        "instruction_id": "old-1",
        "outcome": "completed",
        "exit_code": 0,
        "stdout": "caf\ufffd\n",
        "stderr": "",
        "stdout_truncated": False,
        "stderr_truncated": False,
        "started_at": "2024-01-01T00:00:00Z",
        "finished_at": "2024-01-01T00:00:01Z",
        "reason": None,
    }
    old["hash"] = result_hash(old)
    agent.state.spool_result(old)
    assert agent.delivery.flush_spool() is True
    assert fake_server.results["old-1"] == old
