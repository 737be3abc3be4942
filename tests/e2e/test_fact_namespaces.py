"""Fact namespaces end to end (issue 14, parts 4 and 6): the real agent against the agent tier
(uvicorn), through a recording proxy on 127.0.0.1 that keeps each request's body as sent. Only a
changed namespace travels (as a patch), and the heartbeat that carries it is measured. An agent from
before namespaces (one blob of facts with one hash) is tested in test_agent_v1.py."""

from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from tests.e2e.flows import agent_once, make_world


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
