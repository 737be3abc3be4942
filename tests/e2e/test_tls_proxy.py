"""The shipped nginx site (deploy/nginx/rmm.conf) in front of the real server, with a private CA
made for the test: the real agent enrolls over https with the CA pinned and runs a job through
the agent tier (uvicorn), an agent that does not trust the certificate is refused, and an
evidence export is sent by nginx through X-Accel-Redirect."""

from __future__ import annotations

import hashlib
import json
import ssl
import urllib.error
import urllib.request
import uuid

import pytest

from tests.e2e.flows import finished_export, make_world, publish, run_job
from tests.e2e.server import free_port
from tests.support.nginx import NGINX, Nginx, require, site
from tests.support.tls import certificates

ACCEL = {"RMM_ARTEFACT_ACCEL_REDIRECT": "/_blobs/", "RMM_EVIDENCE_ACCEL_REDIRECT": "/_blobs/"}


@pytest.fixture(scope="module")
def proxy(server, tmp_path_factory):
    """nginx on a free 127.0.0.1 port: the agent protocol to a uvicorn agent tier, the rest to a
    daphne worker, both of the test server and both answering downloads with X-Accel-Redirect."""
    require(NGINX, "nginx")
    tmp = tmp_path_factory.mktemp("nginx")
    ca, cert, key = certificates(tmp)
    agent_tier, console = server.second_worker("uvicorn", ACCEL), server.second_worker("daphne", ACCEL)
    port = free_port()
    text = site(
        https_port=port,
        http_port=free_port(),
        agent_ports=[int(agent_tier.rsplit(":", 1)[1])],
        console_port=int(console.rsplit(":", 1)[1]),
        cert=cert,
        key=key,
        blobs=server.tmp / "var" / "evidence",
    )
    nginx = Nginx(tmp / "prefix", text).start()
    yield {"url": f"https://127.0.0.1:{port}", "ca": ca, "console": console}
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


def test_the_agent_enrolls_and_runs_a_job_over_https_with_its_pinned_ca(server, proxy, tmp_path):
    w = make_world(server)
    state = tmp_path / f"tls-{uuid.uuid4().hex[:6]}"

    refused = enroll(server, proxy, w, state)
    assert refused.returncode == 1
    assert "the server's certificate is not trusted" in refused.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in refused.stderr and not state.exists()

    done = enroll(server, proxy, w, state, "--ca-file", str(proxy["ca"]))
    assert done.returncode == 0, done.stderr
    config = json.loads((state / "config.json").read_text())
    assert (config["server"], config["ca_file"]) == (proxy["url"], str(state / "ca.pem"))
    [asset] = server.request("GET", f"/api/v1/assets/?hostname={state.name}", token=w["tech"]).json()["results"]

    script = publish(server, w, "echo through nginx\n")
    job = run_job(server, {**w, "asset": asset["id"]}, script["id"])
    ran = server.agent(["run", "--state-dir", str(state), "--once"])
    assert ran.returncode == 0, ran.stderr
    job = server.request("GET", f"/api/v1/script-jobs/{job['id']}/", token=w["psa"]).json()
    assert (job["status"], job["result"]["stdout"]) == ("succeeded", "through nginx\n"), job

    # The same agent, its pinned CA replaced by one that did not issue the certificate: refused.
    other_ca, _cert, _key = certificates(tmp_path)
    (state / "ca.pem").write_bytes(other_ca.read_bytes())
    untrusting = server.agent(["run", "--state-dir", str(state), "--once"])
    assert untrusting.returncode == 1
    assert "the server's certificate is not trusted" in untrusting.stderr

    # The job's evidence, exported and sent by nginx from the blob store (X-Accel-Redirect).
    compliance = server.token(f"comp-{uuid.uuid4().hex[:6]}", "compliance")
    r = server.request("POST", "/api/v1/evidence/exports/", {"site": w["site"]}, compliance)
    assert r.status == 202, r.body
    status = finished_export(server, r.json()["id"], compliance)
    assert status["status"] == "done", status
    answer = server.request("GET", status["download"], token=compliance, base=proxy["console"])
    assert (answer.status, answer.body) == (200, b"") and answer.headers["X-Accel-Redirect"].startswith("/_blobs/")
    code, headers, body = fetch(proxy["url"] + status["download"], proxy["ca"], compliance)
    assert (code, headers["Content-Type"]) == (200, "application/zip")
    assert headers["Content-Disposition"] == f'attachment; filename="rmm-evidence-{status["id"]}.zip"'
    assert hashlib.sha256(body).hexdigest() == headers["X-Content-SHA256"] == status["file_hash"]
    assert fetch(proxy["url"] + answer.headers["X-Accel-Redirect"], proxy["ca"])[0] == 404  # internal only
