"""The agent's side of artefacts by hash, against a real HTTP server on 127.0.0.1 that plays the
server's artefact endpoint (its statuses and Range answers): fetched, resumed, verified before
anything runs, given to the script read-only, deleted after the step; refused on a mismatch."""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rmm_agent.artefacts import MAX_ATTEMPTS, Fetcher
from rmm_agent.client import Client
from rmm_agent.protocol import REASON_MALFORMED, InstructionRefused, verify_instruction
from rmm_agent.runner import AbortSignal, Runner

from .conftest import AGENT_ID, SECRET, make_payload, sign, trusted

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
URL = f"/api/v1/agent/artefacts/x/{SHA}/?expires=1&token=t"


class Blobs:
    """What the endpoint serves, and what it was asked: ``cut`` bytes of the first ``cuts``
    answers are sent before the connection is dropped; ``status`` answers every call instead."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.cut = 0
        self.cuts = 0
        self.status = 0
        self.delay = 0.0
        self.requests: list[dict] = []
        self.sent = 0

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        self.requests.append({key.lower(): value for key, value in handler.headers.items()})
        if handler.headers.get("Authorization") != f"Agent {AGENT_ID}:{SECRET}" or self.status:
            handler.send_response(self.status or 401)
            handler.send_header("Content-Length", "2")
            handler.end_headers()
            handler.wfile.write(b"{}")
            return
        start, status = 0, 200
        asked = re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range", ""))
        if asked:
            start, status = int(asked.group(1)), 206
            if start >= len(self.data):
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{len(self.data)}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(self.data) - start))
        if status == 206:
            handler.send_header("Content-Range", f"bytes {start}-{len(self.data) - 1}/{len(self.data)}")
        handler.end_headers()
        body = self.data[start:]
        if self.cuts:
            self.cuts -= 1
            body = body[: self.cut]
        for offset in range(0, len(body), 65536):
            time.sleep(self.delay)
            handler.wfile.write(body[offset : offset + 65536])
            self.sent += len(body[offset : offset + 65536])
        handler.wfile.flush()
        handler.close_connection = True


@pytest.fixture
def blobs():
    state = Blobs(DATA)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            state.serve(self)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


def runner(tmp_path: Path, blobs: Blobs) -> Runner:
    client = Client(blobs.url, agent_id=AGENT_ID, secret=SECRET)
    return Runner(tmp_path / "work", run_as=None, containment="process_group", fetcher=Fetcher(client))


def step(content: str, marker: Path | None = None, **overrides) -> dict:
    touch = f"touch {marker}\n" if marker else ""
    artefacts = [{"name": "payload.bin", "sha256": SHA, "size": len(DATA), "url": URL}]
    return make_payload(touch + content, artefacts=artefacts, **overrides)


READS = 'sha256sum < "$RMM_ARTEFACT_PAYLOAD_BIN" | cut -c1-64\nwc -c < "$RMM_ARTEFACT_PAYLOAD_BIN"\n'


def test_the_script_reads_the_verified_artefact_which_is_deleted_after_the_step(tmp_path: Path, blobs: Blobs) -> None:
    payload = step(READS + 'echo changed > "$RMM_ARTEFACT_PAYLOAD_BIN" || echo not-writable\nid -u\n')
    result = runner(tmp_path, blobs).run(payload)
    assert (result["outcome"], result["exit_code"]) == ("completed", 0), result
    assert result["stdout"].split()[:3] == [SHA, str(len(DATA)), "not-writable"]
    if os.geteuid() == 0:  # read by the run-as account, who cannot reach the agent's state dir
        assert result["stdout"].split()[3] != "0"
    assert "range" not in blobs.requests[0]
    assert not (tmp_path / "work" / ".artefacts" / payload["instruction_id"]).exists()


def test_an_interrupted_download_resumes_from_the_bytes_on_disk(tmp_path: Path, blobs: Blobs) -> None:
    blobs.cut, blobs.cuts = 100_000, 2
    result = runner(tmp_path, blobs).run(step(READS))
    assert result["outcome"] == "completed" and result["stdout"].split()[0] == SHA, result
    assert [request.get("range") for request in blobs.requests] == [None, "bytes=100000-", "bytes=200000-"]
    assert blobs.sent == len(DATA)


@pytest.mark.parametrize(
    "served",
    [DATA[:-1] + bytes([DATA[-1] ^ 1]), DATA + b"more", DATA[:-10]],
    ids=["one-bit", "longer", "shorter"],
)
def test_an_artefact_that_is_not_the_signed_one_is_refused_and_nothing_runs(
    tmp_path: Path, blobs: Blobs, served: bytes
) -> None:
    blobs.data = served
    marker = tmp_path / "ran"
    payload = step(READS, marker)
    result = runner(tmp_path, blobs).run(payload)
    assert (result["outcome"], result["reason"], result["exit_code"]) == ("refused", "artefact_mismatch", None)
    assert not marker.exists()
    assert not (tmp_path / "work" / ".artefacts" / payload["instruction_id"]).exists()
    assert not (tmp_path / "work" / payload["instruction_id"]).exists()


def test_a_refused_fetch_is_an_error_and_nothing_runs(tmp_path: Path, blobs: Blobs) -> None:
    blobs.status = 403
    marker = tmp_path / "ran"
    result = runner(tmp_path, blobs).run(step(READS, marker))
    assert result["outcome"] == "error" and "HTTP 403" in result["reason"]
    assert len(blobs.requests) == 1 and not marker.exists()


def test_transfers_that_keep_failing_are_given_up_after_a_bound(tmp_path: Path, blobs: Blobs) -> None:
    blobs.cut, blobs.cuts = 10, 1000
    marker = tmp_path / "ran"
    result = runner(tmp_path, blobs).run(step(READS, marker))
    assert result["outcome"] == "error" and f"{MAX_ATTEMPTS} transfers failed" in result["reason"], result
    assert len(blobs.requests) == MAX_ATTEMPTS and not marker.exists()


def test_the_download_counts_in_the_timeout(tmp_path: Path, blobs: Blobs) -> None:
    blobs.delay = 0.3  # about 1.5 s for the artefact
    marker = tmp_path / "ran"
    begun = time.monotonic()
    result = runner(tmp_path, blobs).run(step(READS, marker, timeout_seconds=1))
    assert result["outcome"] == "timed_out" and "fetching artefact payload.bin" in result["reason"]
    assert time.monotonic() - begun < 3 and not marker.exists()


def test_an_abort_stops_a_download(tmp_path: Path, blobs: Blobs) -> None:
    blobs.delay = 0.3
    abort = AbortSignal()
    threading.Timer(0.4, abort.set, args=("asked by the server",)).start()
    marker = tmp_path / "ran"
    result = runner(tmp_path, blobs).run(step(READS, marker), abort)
    assert (result["outcome"], result["reason"]) == ("aborted", "asked by the server")
    assert not marker.exists()


@pytest.mark.parametrize(
    "artefacts",
    [
        [{"name": "../x", "sha256": SHA, "size": 1, "url": URL}],
        [{"name": "a", "sha256": SHA.upper(), "size": 1, "url": URL}],
        [{"name": "a", "sha256": SHA, "size": -1, "url": URL}],
        [{"name": "a", "sha256": SHA, "size": 1, "url": "http://elsewhere.example/x"}],
        [{"name": "a", "sha256": SHA, "size": 1, "url": "//elsewhere.example/x"}],
        [{"name": "a.b", "sha256": SHA, "size": 1, "url": URL}, {"name": "A_B", "sha256": SHA, "size": 1, "url": URL}],
        {"name": "a"},
    ],
)
def test_a_signed_payload_with_unusable_artefacts_is_refused(server_key, artefacts) -> None:
    envelope = sign(make_payload(artefacts=artefacts), server_key)
    with pytest.raises(InstructionRefused) as refused:
        verify_instruction(envelope, trusted(server_key), AGENT_ID, datetime.now(UTC))
    assert refused.value.reason == REASON_MALFORMED
