"""Live output on the agent's side: what a running step prints reaches the server while it runs,
at most every half second, in order, bounded, and never after the result."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rmm_agent.client import OUTPUT_PATH, Response, TransportError
from rmm_agent.live import LiveOutput
from rmm_agent.protocol import CAPABILITY_LIVE_OUTPUT, LIVE_CHUNK_BYTES, LIVE_OUTPUT_SECONDS
from rmm_agent.runner import AbortSignal, Runner

from .conftest import make_payload
from .test_spool import make_agent


class RecordingClient:
    """Answers every output call with the next of ``answers`` (then 200), noting what came when."""

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[float, str, dict]] = []
        self.lock = threading.Lock()

    def post_output(self, body: dict, *, timeout: float | None = None) -> Response:
        with self.lock:
            self.calls.append((time.monotonic(), OUTPUT_PATH, body))
            answer = self.answers.pop(0) if self.answers else Response(200, {"status": "accepted"})
        if isinstance(answer, Exception):
            raise answer
        return answer

    def texts(self, stream: str = "stdout") -> str:
        return "".join(body[stream]["text"] for _, _, body in self.calls if stream in body)


def test_a_step_that_prints_sleeps_and_prints_is_heard_before_it_ends(tmp_path: Path) -> None:
    client = RecordingClient()
    payload = make_payload("echo first; echo oops >&2; sleep 1.5; echo second\n")
    live = LiveOutput(client, payload["instruction_id"])
    result = Runner(tmp_path / "work", run_as=None).run(payload, live=live)
    ended = time.monotonic()

    assert result["stdout"] == "first\nsecond\n"  # the record is untouched by streaming
    first = next(when for when, _, body in client.calls if "first" in body.get("stdout", {}).get("text", ""))
    assert ended - first > 1.0, "the first line was sent only once the step had ended"
    assert client.texts() in ("first\n", "first\nsecond\n")  # in order; the end may be left to the result
    assert client.texts("stderr") == "oops\n"
    assert all(body["instruction_id"] == payload["instruction_id"] for _, _, body in client.calls)
    assert all(path == OUTPUT_PATH for _, path, _ in client.calls)


def test_calls_are_spaced_and_offsets_follow_the_stream(tmp_path: Path) -> None:
    client = RecordingClient()
    payload = make_payload("for i in 1 2 3 4 5 6; do echo line $i; sleep 0.2; done\n")
    Runner(tmp_path / "work", run_as=None).run(payload, live=LiveOutput(client, payload["instruction_id"]))

    times = [when for when, _, _ in client.calls]
    assert len(times) >= 2
    assert all(later - earlier >= LIVE_OUTPUT_SECONDS - 0.01 for earlier, later in zip(times, times[1:], strict=False))
    sent = 0
    for _, _, body in client.calls:
        assert body["stdout"]["offset"] == sent  # nothing lost, nothing sent twice
        sent += len(body["stdout"]["text"])
    assert client.texts().startswith("line 1\nline 2\n")


def test_what_was_not_taken_is_sent_again_with_what_came_since() -> None:
    client = RecordingClient(TransportError("down"), Response(429, {}, {"retry-after": "1"}))
    live = LiveOutput(client, "inst-1", interval=0)
    live.feed("stdout", b"one\n")
    assert live.send() == 0  # unreachable: kept
    live.feed("stdout", b"two\n")
    assert live.send() == 1.0  # throttled: kept, and the server's Retry-After is kept to
    assert live.send() == 0
    assert [body["stdout"] for _, _, body in client.calls] == [
        {"offset": 0, "text": "one\n"},
        {"offset": 0, "text": "one\ntwo\n"},
        {"offset": 0, "text": "one\ntwo\n"},
    ]
    live.feed("stdout", b"three\n")
    live.send()
    assert client.calls[-1][2]["stdout"] == {"offset": 8, "text": "three\n"}


def test_a_refusal_ends_the_stream_not_the_step() -> None:
    client = RecordingClient(Response(409, {"detail": "The instruction is not running."}))
    live = LiveOutput(client, "inst-2")
    live.feed("stdout", b"x")
    assert live.send() is None


def test_a_character_split_between_reads_arrives_whole() -> None:
    client = RecordingClient()
    live = LiveOutput(client, "inst-3", interval=0)
    encoded = "héllo ✓\n".encode()
    live.feed("stdout", encoded[:2])  # "h" and half of "é"
    live.send()
    live.feed("stdout", encoded[2:])
    live.send()
    assert client.texts() == "héllo ✓\n"
    assert client.calls[1][2]["stdout"]["offset"] == 1


def test_output_faster_than_it_can_be_sent_keeps_its_end_and_says_how_much_went() -> None:
    client = RecordingClient()
    live = LiveOutput(client, "inst-4", interval=0)
    live.feed("stdout", b"a" * LIVE_CHUNK_BYTES + b"b" * 100)
    live.send()
    chunk = client.calls[0][2]["stdout"]
    assert len(chunk["text"].encode()) == LIVE_CHUNK_BYTES
    assert chunk["offset"] == 100 and chunk["text"].endswith("b" * 100)


@pytest.mark.parametrize("offered", [True, False], ids=["offered", "not-offered"])
def test_the_agent_streams_only_what_the_signed_payload_offers(
    tmp_path: Path, server_key: Ed25519PrivateKey, offered: bool
) -> None:
    agent = make_agent(tmp_path, "http://127.0.0.1:9", server_key)
    agent.client = client = RecordingClient()
    agent.runner = Runner(tmp_path / "work", run_as=None)
    payload = make_payload("echo streamed; sleep 0.3\n", **({"live_output": True} if offered else {}))
    agent._execute(payload, AbortSignal())

    assert agent.state.spooled_results()[0]["stdout"] == "streamed\n"
    assert client.texts() == ("streamed\n" if offered else "")
    assert CAPABILITY_LIVE_OUTPUT in agent.capabilities()
