"""Fact namespaces end to end (issue 14, parts 4 and 6): the real agent against the agent tier
(uvicorn), through a recording proxy on 127.0.0.1 that keeps each request's body as sent. Only a
changed namespace travels (as a patch), and the heartbeat that carries it is measured; an agent from before
namespaces (its code at V1_AGENT_COMMIT, one blob of facts with one hash) is still served."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from tests.e2e.flows import agent_once, make_world, publish, run_job
from tests.e2e.server import ROOT

# The last commit whose agent sends its facts as one blob with one hash (protocol v1).
V1_AGENT_COMMIT = "72a38ce0379f36a42017e59c01929e05546b6f84"


class RecordingProxy:
    """Forwards every POST to ``target`` and keeps (path, body bytes) of each, in order."""

    def __init__(self, target: str) -> None:
        self.requests: list[tuple[str, bytes]] = []
        parts, recorded = urlsplit(target), self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                recorded.append((self.path, body))
                upstream = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
                forwarded = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                upstream.request("POST", self.path, body=body, headers=forwarded)
                answer = upstream.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream.close()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def heartbeats(self) -> list[bytes]:
        return [body for path, body in self.requests if path.endswith("/heartbeat/")]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def proxy(server):
    recording = RecordingProxy(server.second_worker("uvicorn"))
    yield recording
    recording.close()


def point_at(w: dict, url: str) -> None:
    config_path = w["state"] / "config.json"
    config_path.write_text(json.dumps(dict(json.loads(config_path.read_text()), server=url)))


def set_hostname(w: dict, hostname: str) -> None:
    config_path = w["state"] / "config.json"
    config_path.write_text(json.dumps(dict(json.loads(config_path.read_text()), hostname=hostname)))


def carried(raw: bytes) -> list[str]:
    """The namespaces a heartbeat carried a body or a patch of."""
    return sorted(name for name, entry in json.loads(raw)["namespaces"].items() if set(entry) != {"hash"})


def test_only_a_changed_namespace_travels(server, proxy):
    w = make_world(server)
    point_at(w, proxy.url)
    agent_once(server, w)  # the first heartbeat: every namespace
    agent_once(server, w)  # nothing changed: hashes only
    set_hostname(w, w["hostname"] + "-renamed")  # the network namespace changes, nothing else
    agent_once(server, w)

    first, unchanged, changed = proxy.heartbeats()
    assert carried(first) == ["agent", "hardware", "network", "os"]
    assert carried(unchanged) == []
    assert carried(changed) == ["network"]
    sent = json.loads(changed)["namespaces"]["network"]
    assert sent["patch"] == {"hostname": w["hostname"] + "-renamed"}  # against the acknowledged body
    # What travels: the hashes, plus the changed namespace's patch alone.
    assert len(unchanged) < len(changed) < len(first)
    assert len(changed) - len(unchanged) == len(json.dumps(sent["patch"], separators=(",", ":"))) + len(',"patch":')
    asset = server.request("GET", f"/api/v1/assets/{w['asset']}/", token=w["tech"]).json()
    assert asset["hostname"] == w["hostname"] + "-renamed"
    assert asset["facts"]["hostname"] == asset["hostname"] and "kernel" in asset["facts"]
    assert asset["facts"]["addresses"] == json.loads(first)["namespaces"]["network"]["body"]["addresses"]

    agent_once(server, w)  # the server took the patch: nothing more travels
    assert carried(proxy.heartbeats()[-1]) == []


def v1_agent(tmp_path) -> list[str]:
    """The command of the agent as it was at V1_AGENT_COMMIT, extracted from this repository."""
    where = tmp_path / "v1"
    where.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", V1_AGENT_COMMIT, "rmm_agent"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        why = f"the v1 agent's commit is not in this checkout: {archive.stderr.decode()[:200]}"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive.stdout, check=True)
    return [
        sys.executable,
        "-c",
        f"import sys; sys.path.insert(0, {str(where)!r}); import runpy;"
        " runpy.run_module('rmm_agent', run_name='__main__')",
    ]


def test_a_v1_agent_is_still_served(server, proxy, tmp_path):
    command = v1_agent(tmp_path)
    w = make_world(server)
    point_at(w, proxy.url)
    script = publish(server, w, "echo from a v1 agent\n")
    job = run_job(server, w, script["id"])
    for _ in range(2):
        done = subprocess.run(
            [*command, "run", "--state-dir", str(w["state"]), "--once"],
            cwd=tmp_path,
            env=server.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr

    first, second = (json.loads(raw) for raw in proxy.heartbeats())
    assert "namespaces" not in first and first["facts"]["hostname"] == w["hostname"]
    assert "facts" not in second and second["facts_hash"] == first["facts_hash"]  # acknowledged
    job = server.request("GET", f"/api/v1/script-jobs/{job['id']}/", token=w["psa"]).json()
    assert job["status"] == "succeeded", job
    assert job["result"]["stdout"] == "from a v1 agent\n"
    asset = server.request("GET", f"/api/v1/assets/{w['asset']}/", token=w["tech"]).json()
    assert asset["facts"]["facts_hash"] == first["facts_hash"]
