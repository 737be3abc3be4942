"""EDR containment end to end, as root, in network namespaces made here (issue 19, Done when).

A veth pair joins an endpoint namespace to the root namespace, where the RMM server listens on one
address of the pair and a second listener, "the internet", on another. The real agent runs in the
endpoint namespace (``ip netns exec``) and reaches the server over http with
``--allow-insecure-http`` (the address is not loopback). The EDR isolates the endpoint: it still
reaches the server (the agent's next heartbeat and the state read's result arrive) and no longer
the other listener; a second isolate is the same job; release restores it. An unrelated nft table
in the namespace survives both, unchanged. Both states are in an evidence export that verifies
offline, and the PSA stand-in received ``containment.changed`` twice. The namespace and the veth
pair are removed whatever happens.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rmm.deploy.processes import free_port
from tests.e2e.flows import make_world, wait_for
from tests.e2e.server import ROOT, Server
from tests.e2e.test_key_rotation import export_bundle, verify_offline
from tests.support.debian import require

if os.geteuid() != 0:
    if os.environ.get("CI"):
        pytest.fail("needs root for network namespaces and nft (CI is set, so this may not be skipped)", pytrace=False)
    pytest.skip("needs root for network namespaces and nft", allow_module_level=True)

UNRELATED = "inet rmm_e2e_unrelated"  # a table someone else put on the endpoint


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=30)


class Network:
    """An endpoint namespace joined to the root namespace by a veth pair on a /24 of its own: the
    server's address (.1) and the internet's (.3) on the root side, the endpoint's (.2) inside."""

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.ns, self.outside, self.inside = f"rmmc{tag}", f"rmvh{tag}", f"rmvp{tag}"
        net = f"10.{200 + int(tag[:2], 16) % 50}.{int(tag[2:4], 16)}"
        self.server, self.endpoint, self.internet = f"{net}.1", f"{net}.2", f"{net}.3"

    def up(self) -> None:
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.outside, "type", "veth", "peer", "name", self.inside)
        sh("ip", "link", "set", self.inside, "netns", self.ns)
        for address in (self.server, self.internet):
            sh("ip", "addr", "add", f"{address}/24", "dev", self.outside)
        sh("ip", "link", "set", self.outside, "up")
        self.run("ip", "addr", "add", f"{self.endpoint}/24", "dev", self.inside)
        self.run("ip", "link", "set", self.inside, "up")
        self.run("ip", "link", "set", "lo", "up")

    def down(self) -> None:
        sh("ip", "netns", "del", self.ns, check=False)  # takes the inside end, and so the pair, with it
        sh("ip", "link", "del", self.outside, check=False)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.ns, *args, check=check)

    def reaches(self, address: str, port: int) -> bool:
        """A TCP connection from inside the endpoint namespace, within two seconds."""
        probe = f"import socket; socket.create_connection(({address!r}, {port}), timeout=2).close()"
        return self.run(sys.executable, "-c", probe, check=False).returncode == 0

    def table(self, name: str) -> str | None:
        listed = self.run("nft", "list", "table", *name.split(), check=False)
        return listed.stdout if listed.returncode == 0 else None


class Internet:
    """Any other host: an HTTP listener on the internet's address."""

    def __init__(self, address: str):
        class Hello(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer((address, 0), Hello)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def network():
    require("/usr/sbin/nft", "nftables")
    net = Network()
    try:
        net.up()
        yield net
    finally:
        net.down()


@pytest.fixture(scope="module")
def contained_server(tmp_path_factory, network, psa_receiver):
    port = free_port()
    env = {
        "RMM_ALLOWED_HOSTS": f"{network.server},127.0.0.1",
        "RMM_CONTAINMENT_SERVER": f"{network.server}:{port}",
        # the release's four eyes are the service tests'; here the endpoint's side is under test
        "RMM_CONTAINMENT_RELEASE_NEEDS_APPROVAL": "0",
        "RMM_PSA_WEBHOOK_URL": psa_receiver.url,
        "RMM_PSA_WEBHOOK_SECRET": psa_receiver.secret,
    }
    srv = Server(tmp_path_factory.mktemp("containment"), env, host=network.server)
    srv.port, srv.url = port, f"http://{network.server}:{port}"
    srv.enroll_args = ("--allow-insecure-http",)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def agent_inside(server: Server, network: Network, w: dict) -> None:
    """One run of the real agent inside the endpoint namespace: heartbeat, lease, run, report."""
    done = subprocess.run(
        ["ip", "netns", "exec", network.ns, sys.executable, "-m", "rmm_agent", "run"]
        + ["--state-dir", str(w["state"]), "--once"],
        cwd=ROOT,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_the_edr_isolates_an_endpoint_that_still_reaches_only_the_server_and_release_restores_it(
    contained_server, network, psa_receiver, tmp_path
):
    server, net = contained_server, network
    internet = Internet(net.internet)
    try:
        w = make_world(server)
        edr = server.token(f"edr-{uuid.uuid4().hex[:6]}", "edr")
        net.run("nft", "add", "table", *UNRELATED.split())
        chain = "{ type filter hook output priority 0; policy accept; }"
        net.run("nft", "add", "chain", *UNRELATED.split(), "keep", chain)
        net.run("nft", "add", "rule", *UNRELATED.split(), "keep", "tcp", "dport", "9", "accept")
        unrelated = net.table(UNRELATED)
        assert net.reaches(net.internet, internet.port) and net.reaches(net.server, server.port)

        def ask(action: str) -> tuple[int, dict]:
            body = {"asset": w["asset"], "action": action, "reason": "EDR alert 4711", "psa_task_id": w["task"]}
            r = server.request("POST", "/api/v1/containment/", body, edr)
            return r.status, r.json()

        def settle(job_id: str) -> dict:
            agent_inside(server, net, w)  # the change
            agent_inside(server, net, w)  # its next heartbeat arrives; the state read
            return server.request("GET", f"/api/v1/containment/{job_id}/", token=w["psa"]).json()

        def containment() -> str:
            return server.request("GET", f"/api/v1/assets/{w['asset']}/", token=w["psa"]).json()["containment"]

        assert containment() == "none"
        status, isolate = ask("isolate")
        assert status == 201 and isolate["status"] == "queued", isolate
        done = settle(isolate["id"])
        assert done["status"] == "succeeded", done
        assert containment() == "contained"
        assert net.table("inet rmm_containment") is not None
        assert net.reaches(net.server, server.port), "the endpoint lost the RMM server"
        assert not net.reaches(net.internet, internet.port), "the endpoint still reaches the internet"
        assert not net.reaches(net.internet, server.port), "another address on the server's port is reachable"
        assert net.table(UNRELATED) == unrelated

        status, again = ask("isolate")
        assert status == 200 and again["id"] == isolate["id"]
        agent_inside(server, net, w)  # nothing more to run: the heartbeat still arrives
        assert server.request("GET", f"/api/v1/assets/{w['asset']}/", token=w["psa"]).json()["agent"]["last_seen_at"]

        status, release = ask("release")
        assert status == 201 and release["status"] == "queued", release
        undone = settle(release["id"])
        assert undone["status"] == "succeeded", undone
        assert containment() == "released"
        assert net.table("inet rmm_containment") is None
        assert net.reaches(net.internet, internet.port)
        assert net.table(UNRELATED) == unrelated, "release touched what was there before"

        def changed() -> list[dict] | None:
            bodies = [r["body"] for r in psa_receiver.received if r["body"].get("event") == "containment.changed"]
            mine = [body for body in bodies if body["asset"] == w["asset"]]
            return mine if len(mine) >= 2 else None

        told = wait_for(changed, 60, "containment.changed at the PSA")
        assert [t["containment"] for t in told] == ["contained", "released"]
        assert {t["psa_task_id"] for t in told} == {w["task"]}

        compliance = server.token(f"comp-{uuid.uuid4().hex[:6]}", "compliance")
        _, bundle = export_bundle(server, w, compliance, tmp_path / "export")
        manifest = (bundle / "manifest.json").read_text()
        for evidence_id in done["evidence"] + undone["evidence"]:
            assert evidence_id in manifest
        assert told[0]["evidence_id"] == done["evidence"][-1] and told[1]["evidence_id"] == undone["evidence"][-1]
        checked = verify_offline(bundle)
        assert checked.returncode == 0 and "VERDICT: PASS" in checked.stdout, checked.stdout
    finally:
        internet.close()
