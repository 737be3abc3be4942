"""The shipped nginx site (deploy/nginx/rmm.conf) in front of the real server, with a private CA
made for the test: the real agent enrolls over https with the CA pinned and runs a job through
the agent tier (uvicorn) while the console's websocket hears it through nginx, an agent that does
not trust the certificate is refused, and an evidence export is sent by nginx through
X-Accel-Redirect."""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import urllib.error
import urllib.request
import uuid
from types import SimpleNamespace

import pytest
from websockets.sync.client import connect

from deploy.proxy import NGINX, Nginx, site
from deploy.tls import certificates
from tests.e2e.flows import Session, console_users, finished_export, make_world, publish, run_job
from tests.e2e.server import Server, free_port
from tests.e2e.test_console_live import events_until
from tests.support.tools import require

PASSWORD = "correct horse battery staple"
ACCEL = {"RMM_ARTEFACT_ACCEL_REDIRECT": "/_blobs/", "RMM_EVIDENCE_ACCEL_REDIRECT": "/_blobs/"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server of its own (in place of the session's) whose workers answer downloads with
    X-Accel-Redirect."""
    srv = Server(tmp_path_factory.mktemp("accel"), ACCEL).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def proxy(server, tmp_path_factory):
    """nginx on a free 127.0.0.1 port in front of the server: the agent protocol to a uvicorn agent
    tier, the rest to daphne. With Redis the agent tier is a process of its own, as in production;
    the embedded default's in-memory channel layer reaches no other process, so there the agent
    tier is the daphne worker (whose websocket must hear the agents' results)."""
    require(NGINX, "nginx")
    tmp = tmp_path_factory.mktemp("nginx")
    ca, cert, key = certificates(tmp)
    agent_tier = server.second_worker("uvicorn") if os.environ.get("REDIS_URL") else server.url
    port = free_port()
    text = site(
        https_port=port,
        http_port=free_port(),
        agent_ports=[int(agent_tier.rsplit(":", 1)[1])],
        console_port=server.port,
        cert=cert,
        key=key,
        blobs=server.tmp / "var" / "evidence",
    )
    nginx = Nginx(tmp / "prefix", text).start()
    yield {"url": f"https://127.0.0.1:{port}", "ca": ca}
    nginx.stop()


def fetch(url: str, ca, token: str | None = None) -> tuple[int, dict, bytes]:
    """GET over https trusting ``ca`` alone: (status, headers, body)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30, context=ssl.create_default_context(cafile=ca)) as answer:  # noqa: S310
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def enroll(server, proxy, w, state, *ca_file: str):
    token = server.manage("rmm_enrollment_token", "--site", w["site"]).stdout.strip()
    hostname = state.name
    args = ["enroll", "--server", proxy["url"], "--token", token, "--state-dir", str(state), "--hostname", hostname]
    return server.agent([*args, *ca_file])


@pytest.fixture(scope="module")
def world(server, proxy, tmp_path_factory):
    """A site with approved authority, and a real agent enrolled through nginx over https."""
    w = make_world(server)
    state = tmp_path_factory.mktemp("agents") / f"tls-{uuid.uuid4().hex[:6]}"
    refused = enroll(server, proxy, w, state)
    assert refused.returncode == 1
    assert "the server's certificate is not trusted" in refused.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in refused.stderr and not state.exists()

    done = enroll(server, proxy, w, state, "--ca-file", str(proxy["ca"]))
    assert done.returncode == 0, done.stderr
    config = json.loads((state / "config.json").read_text())
    assert (config["server"], config["ca_file"]) == (proxy["url"], str(state / "ca.pem"))
    [asset] = server.request("GET", f"/api/v1/assets/?hostname={state.name}", token=w["tech"]).json()["results"]
    return {**w, "asset": asset["id"], "state": state}


def console_session(server, proxy, w) -> Session:
    """A technician of the world's site, signed in to the console through nginx."""
    username = f"tech-{uuid.uuid4().hex[:6]}"
    console_users(server, {username: ("technician", [w["site"]])}, PASSWORD)
    session = Session(SimpleNamespace(url=proxy["url"]))
    context = ssl.create_default_context(cafile=proxy["ca"])
    session.opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(session.jar), urllib.request.HTTPSHandler(context=context)
    )
    return session.login(username, PASSWORD)


def test_a_job_runs_over_https_while_the_console_hears_it_through_nginx(server, proxy, world):
    session = console_session(server, proxy, world)
    ws_url = proxy["url"].replace("https://", "wss://") + "/ws/console/"
    context = ssl.create_default_context(cafile=proxy["ca"])
    headers = {"Cookie": session.cookie_header}
    with connect(ws_url, ssl=context, additional_headers=headers, origin=proxy["url"], open_timeout=5) as ws:
        script = publish(server, world, "echo through nginx\n")
        job = run_job(server, world, script["id"])
        ran = server.agent(["run", "--state-dir", str(world["state"]), "--once"])
        assert ran.returncode == 0, ran.stderr
        heard = events_until(ws, lambda e: e.get("id") == job["id"] and e.get("status") == "succeeded")
    assert [e["status"] for e in heard if e.get("type") == "job" and e["id"] == job["id"]] == [
        "queued",
        "running",
        "succeeded",
    ]
    job = server.request("GET", f"/api/v1/script-jobs/{job['id']}/", token=world["psa"]).json()
    assert (job["status"], job["result"]["stdout"]) == ("succeeded", "through nginx\n"), job


def test_an_evidence_export_is_sent_by_nginx(server, proxy, world):
    """The worker checks and records the download and answers X-Accel-Redirect; nginx sends the
    bytes from the blob store, with the bundle's hash, and never serves /_blobs/ from outside."""
    compliance = server.token(f"comp-{uuid.uuid4().hex[:6]}", "compliance")
    r = server.request("POST", "/api/v1/evidence/exports/", {"site": world["site"]}, compliance)
    assert r.status == 202, r.body
    status = finished_export(server, r.json()["id"], compliance)
    assert status["status"] == "done", status
    answer = server.request("GET", status["download"], token=compliance)  # the worker itself
    assert (answer.status, answer.body) == (200, b"") and answer.headers["X-Accel-Redirect"].startswith("/_blobs/")
    code, headers, body = fetch(proxy["url"] + status["download"], proxy["ca"], compliance)
    assert (code, headers["Content-Type"]) == (200, "application/zip")
    assert headers["Content-Disposition"] == f'attachment; filename="rmm-evidence-{status["id"]}.zip"'
    assert hashlib.sha256(body).hexdigest() == headers["X-Content-SHA256"] == status["file_hash"]
    assert fetch(proxy["url"] + answer.headers["X-Accel-Redirect"], proxy["ca"])[0] == 404  # internal only


def test_an_agent_whose_pinned_ca_did_not_issue_the_certificate_is_refused(server, world, tmp_path):
    other_ca, _cert, _key = certificates(tmp_path)
    (world["state"] / "ca.pem").write_bytes(other_ca.read_bytes())
    refused = server.agent(["run", "--state-dir", str(world["state"]), "--once"])
    assert refused.returncode == 1
    assert "the server's certificate is not trusted" in refused.stderr
