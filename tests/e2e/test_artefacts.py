"""Artefacts by hash end to end: the real server (its uvicorn agent tier) and the real agent, a
step of the test-only kind naming a blob of the store. Between them, a real HTTP proxy on
127.0.0.1 that forwards every call and can cut the first artefact transfer short, as a network
would: the agent resumes it with Range. A blob altered on disk after the job was issued is
refused (artefact_mismatch) and its step never runs. An agent that speaks protocol 1 (no
"protocol" in its heartbeat) is never given such a step."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.e2e.flows import agent_once, make_world
from tests.e2e.server import ROOT, Server

SIZE = 50 * 1024 * 1024
CUT = 20 * 1024 * 1024
ARTEFACT_PATH = "/api/v1/agent/artefacts/"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "te", "trailer"}


class CuttingProxy:
    """Forwards every call to ``upstream``; the first artefact answer is cut after ``cut`` bytes
    of its body (the connection dropped). Records each artefact call's Range and bytes sent."""

    def __init__(self, upstream: str, cut: int | None) -> None:
        self.upstream = urlsplit(upstream)
        self.cut = cut
        self.fetches: list[dict] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                proxy.forward(self)

            def do_POST(self) -> None:
                proxy.forward(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def forward(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        headers = {key: value for key, value in handler.headers.items() if key.lower() not in HOP_BY_HOP}
        upstream = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=120)
        upstream.request(handler.command, handler.path, body=body, headers=headers)
        answer = upstream.getresponse()
        fetch = handler.path.startswith(ARTEFACT_PATH)
        limit = None
        if fetch:
            with self.lock:
                record = {"range": handler.headers.get("Range"), "status": answer.status, "bytes": 0}
                self.fetches.append(record)
                if self.cut is not None and len(self.fetches) == 1:
                    limit = self.cut
        handler.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in HOP_BY_HOP:
                handler.send_header(key, value)
        handler.end_headers()
        sent = 0
        while chunk := answer.read(256 * 1024):
            if limit is not None and sent + len(chunk) >= limit:
                handler.wfile.write(chunk[: limit - sent])
                sent = limit
                break  # the connection is dropped mid-body (HTTP/1.0: closed after this call)
            handler.wfile.write(chunk)
            sent += len(chunk)
        if fetch:
            record["bytes"] = sent
        upstream.close()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def artefact_server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("artefacts"), {"DJANGO_SETTINGS_MODULE": "tests.settings"}).start()
    yield srv
    srv.stop()


@pytest.fixture
def marker_dir():
    """Where the step's marker goes: a folder the run-as account (the step's, under a root agent)
    may write, so that an absent marker means the step did not run."""
    folder = tempfile.mkdtemp(prefix="rmm-artefact-marker-")
    os.chmod(folder, 0o777)  # noqa: S103 - the run-as account must be able to write it
    yield Path(folder)
    for child in Path(folder).iterdir():
        child.unlink()
    os.rmdir(folder)


def through(server: Server, w: dict, cut: int | None) -> CuttingProxy:
    """Point the world's agent at a proxy in front of the server's uvicorn agent tier."""
    proxy = CuttingProxy(server.second_worker("uvicorn"), cut)
    config_path = Path(w["state"]) / "config.json"
    config = json.loads(config_path.read_text())
    config["server"] = proxy.url
    config_path.write_text(json.dumps(config))
    return proxy


def queue_step(server: Server, tmp_path: Path, data: bytes, marker: Path) -> tuple[dict, str]:
    """A world whose one step names ``data`` (put in the server's blob store) and touches
    ``marker`` when it runs: the world and the job's id."""
    w = make_world(server)
    artefact = tmp_path / "artefact.bin"
    artefact.write_bytes(data)
    made = server.manage(
        "stepkind_job", "create", w["hostname"], w["task"], "1", "--artefact", str(artefact), "--marker", str(marker)
    )
    return w, made.stdout.strip()


def run_agent_through(server: Server, w: dict, cut: int | None) -> CuttingProxy:
    """Run the world's agent once through a proxy in front of the server's uvicorn agent tier."""
    proxy = through(server, w, cut)
    try:
        agent_once(server, w)
    finally:
        proxy.close()
    return proxy


def show(server: Server, job_id: str) -> dict:
    return json.loads(server.manage("stepkind_job", "show", job_id).stdout)


def stdout_of(server: Server, w: dict, job: dict) -> str:
    [evidence_id] = job["evidence"]
    blob = server.request("GET", f"/api/v1/evidence/{evidence_id}/content/", token=w["psa"])
    return json.loads(blob.body)["result"]["stdout"]


def test_a_50_mb_artefact_is_fetched_through_an_interrupted_download_and_resumed(artefact_server, tmp_path, marker_dir):
    data, marker = os.urandom(SIZE), marker_dir / "ran"
    w, job_id = queue_step(artefact_server, tmp_path, data, marker)
    proxy = run_agent_through(artefact_server, w, CUT)
    job = show(artefact_server, job_id)
    assert job["status"] == "succeeded", job
    assert stdout_of(artefact_server, w, job).split() == ["step", "0", hashlib.sha256(data).hexdigest(), str(SIZE)]
    assert marker.exists()
    first, second = proxy.fetches
    assert (first["range"], first["status"], first["bytes"]) == (None, 200, CUT)
    assert (second["range"], second["status"]) == (f"bytes={CUT}-", 206)
    assert first["bytes"] + second["bytes"] == SIZE < 2 * SIZE


def test_a_tampered_artefact_is_refused_and_its_step_never_runs(artefact_server, tmp_path, marker_dir):
    data, marker = os.urandom(1024 * 1024), marker_dir / "ran"
    w, job_id = queue_step(artefact_server, tmp_path, data, marker)
    digest = hashlib.sha256(data).hexdigest()
    stored = Path(artefact_server.env["RMM_VAR_DIR"]) / "evidence" / "stepkind" / digest[:2] / f"{digest}.bin"
    assert stored.read_bytes() == data
    stored.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # the store altered after the job was issued
    proxy = run_agent_through(artefact_server, w, None)
    job = show(artefact_server, job_id)
    assert (job["status"], job["status_reason"]) == ("failed", "agent refused the instruction: artefact_mismatch")
    assert not marker.exists()
    assert [fetch["status"] for fetch in proxy.fetches] == [200]


# The real agent as an agent of protocol 1 would call: its heartbeats without "protocol".
AS_PROTOCOL_1 = (
    "import runpy, sys\n"
    "from rmm_agent import client\n"
    "beat = client.Client.heartbeat\n"
    "client.Client.heartbeat = lambda self, body: beat(self, {k: v for k, v in body.items() if k != 'protocol'})\n"
    "sys.argv[0] = 'rmm_agent'\n"
    "runpy.run_module('rmm_agent', run_name='__main__')\n"
)


def test_an_agent_of_protocol_1_is_never_given_a_step_with_artefacts(artefact_server, tmp_path, marker_dir):
    data, marker = os.urandom(1024), marker_dir / "ran"
    w, job_id = queue_step(artefact_server, tmp_path, data, marker)
    done = subprocess.run(
        [sys.executable, "-c", AS_PROTOCOL_1, "run", "--state-dir", str(w["state"]), "--once"],
        cwd=ROOT,
        env=artefact_server.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    job = show(artefact_server, job_id)
    assert job["status"] == "aborted" and "the agent (protocol 1) cannot fetch" in job["status_reason"], job
    assert not marker.exists()
