"""A v1 agent against today's server (issue 14, part 6): the agent as it was before protocol v2,
taken from the repository's history, enrolls, sends its facts as one document, leases a signed
script instruction, runs it and reports; the job ends with its evidence, as before.

The v1 agent is the tree of ``rmm_agent/`` at ``V1_AGENT_COMMIT`` (the last change to the agent
before protocol v2), extracted with ``git archive``: the test needs the repository's history, as
a clone has."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pytest

from tests.e2e.flows import make_world, publish, run_job
from tests.e2e.server import ROOT

V1_AGENT_COMMIT = "01eb9d709c0c749ce63c9983e20d62dd029ac2a3"


@pytest.fixture(scope="module")
def v1_agent(tmp_path_factory) -> Path:
    """A directory holding the v1 agent's package, to run with ``python -m rmm_agent`` from it."""
    home = tmp_path_factory.mktemp("agent-v1")
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", V1_AGENT_COMMIT, "rmm_agent"],
        capture_output=True,
        check=False,
    )
    assert archive.returncode == 0, f"the v1 agent is not in this clone's history: {archive.stderr.decode()}"
    (home / "v1.tar").write_bytes(archive.stdout)
    with tarfile.open(home / "v1.tar") as tar:
        tar.extractall(home, filter="data")
    return home


def run_v1(server, home: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = {key: value for key, value in server.env.items() if key != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-m", "rmm_agent", *args], cwd=home, env=env, capture_output=True, text=True, timeout=120
    )


def test_a_v1_agent_enrolls_reports_facts_and_runs_a_job_on_the_v2_server(server, v1_agent):
    here = os.path.realpath(
        subprocess.run(
            [sys.executable, "-c", "import rmm_agent, os; print(os.path.dirname(rmm_agent.__file__))"],
            cwd=v1_agent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    assert here == os.path.realpath(v1_agent / "rmm_agent")  # the old code runs, not the repository's

    w = make_world(server)  # the world's own agent is today's; the v1 agent joins the same site
    hostname = f"v1-{uuid.uuid4().hex[:6]}"
    token = server.manage("rmm_enrollment_token", "--site", w["site"]).stdout.strip()
    state = v1_agent / f"state-{hostname}"
    done = run_v1(
        server,
        v1_agent,
        ["enroll", "--server", server.url, "--token", token, "--state-dir", str(state), "--hostname", hostname],
    )
    assert done.returncode == 0, done.stderr
    [asset] = server.request("GET", f"/api/v1/assets/?hostname={hostname}", token=w["tech"]).json()["results"]

    script = publish(server, w, "echo hello from the v1 agent\n")
    job = run_job(server, {**w, "asset": asset["id"]}, script["id"])
    done = run_v1(server, v1_agent, ["run", "--state-dir", str(state), "--once"])
    assert done.returncode == 0, done.stderr

    job = server.request("GET", f"/api/v1/script-jobs/{job['id']}/", token=w["psa"]).json()
    assert job["status"] == "succeeded", job
    assert job["result"]["stdout"] == "hello from the v1 agent\n"
    [evidence_id] = job["evidence"]
    record = server.request("GET", f"/api/v1/evidence/{evidence_id}/", token=w["psa"]).json()
    blob = server.request("GET", f"/api/v1/evidence/{evidence_id}/content/", token=w["psa"])
    assert hashlib.sha256(blob.body).hexdigest() == record["hash"]
    assert json.loads(blob.body)["asset"]["hostname"] == hostname
    # Its facts, sent as one document, are the asset's.
    seen = server.request("GET", f"/api/v1/assets/{asset['id']}/", token=w["tech"]).json()
    assert seen["hostname"] == hostname
    # The server acknowledged that document's hash: the agent stops resending it.
    acked = json.loads((state / "state.json").read_text())["acked_facts_hash"]
    assert acked and seen["facts"]["facts_hash"] == acked
