"""The fleet benchmark's proxy mode (``python -m bench --proxy nginx``) without the benchmark: the
shipped site in front of two agent-tier workers, over https with the run's CA, and the count of
nginx's answers and upstream errors that the report prints."""

from __future__ import annotations

import ssl
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench.cluster import proxy_answers, start_proxy
from rmm.deploy.nginx import NGINX
from tests.support.debian import require


def tier(name: str) -> ThreadingHTTPServer:
    """A stand-in agent-tier worker on a free port: 200 naming itself, 500 on .../fail/."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status = 500 if self.path.endswith("/fail/") else 200
            body = name.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def post(url: str, ca: str) -> tuple[int, str]:
    request = urllib.request.Request(url, data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10, context=ssl.create_default_context(cafile=ca)) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture
def workers():
    servers = [tier("worker-1"), tier("worker-2")]
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def test_the_agents_reach_both_workers_through_nginx_over_https_and_every_answer_is_counted(
    tmp_path: Path, workers
) -> None:
    require(NGINX, "nginx")
    ports = [server.server_address[1] for server in workers]
    nginx, ca, port = start_proxy(tmp_path, ports, ports[0], agents=10_000)
    try:
        conf = (nginx.prefix / "nginx.conf").read_text()
        assert "worker_connections 768;" not in conf  # Debian's default would hold 384 agents a worker
        url = f"https://127.0.0.1:{port}/api/v1/agent/heartbeat/"
        served = [post(url, ca) for _ in range(8)]
        assert {status for status, _ in served} == {200}
        assert {name for _, name in served} == {"worker-1", "worker-2"}  # round robin over the tier
        assert post(url.replace("heartbeat", "fail"), ca)[0] == 500
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(url, data=b"{}", timeout=10)  # the system's trust store knows no such CA
        workers[1].shutdown()
        workers[1].server_close()  # one worker gone: nginx sends its calls to the other
        assert {post(url, ca) for _ in range(4)} == {(200, "worker-1")}
    finally:
        nginx.stop()
    answers = proxy_answers(nginx)
    assert answers["statuses"] == {"200": 12, "500": 1}
    refused = "connect() failed (111: Connection refused) (connecting to upstream)"
    assert answers["upstream_errors"].get(refused, 0) >= 1, answers
