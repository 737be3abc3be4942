"""Results that cannot be lost, against a real server and the real agent: a megabyte of any bytes
arrives whole with its evidence (issue 11, defects 3 and 4), and a result that arrives after the
sweep declared its instruction lost is kept (issue 12, item 3)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.e2e.flows import agent_once, make_world, publish, run_job
from tests.e2e.server import ROOT

MIB = 1024 * 1024
SCRIPTS = {
    # name: (script, the bytes it prints on stdout, on stderr)
    "newlines": (
        f"head -c {MIB} /dev/zero | tr '\\000' '\\n'\nhead -c {MIB} /dev/zero | tr '\\000' '\\n' >&2\n",
        b"\n" * MIB,
        b"\n" * MIB,
    ),
    "invalid_utf8": (
        f"head -c {MIB} /dev/zero | tr '\\000' '\\377'\nprintf 'caf\\351\\n' >&2\n",
        b"\xff" * MIB,
        b"caf\xe9\n",
    ),
    "nuls": (f"head -c {MIB} /dev/zero\nprintf 'a\\000b\\n' >&2\n", b"\x00" * MIB, b"a\x00b\n"),
}


def unescape(text: str, escaped: bool) -> bytes:
    """The reversal docs/evidence.md documents."""
    data = text.encode("utf-8")
    if not escaped:
        return data
    return re.sub(
        rb"\\(\\|x([0-9a-f]{2}))", lambda m: bytes.fromhex(m.group(2).decode()) if m.group(2) else b"\\", data
    )


@pytest.fixture(scope="module")
def world(server):
    return make_world(server)


def evidence_documents(server, w, job: dict) -> dict[str, dict]:
    """The job's evidence documents by evidence id, each checked against its recorded hash."""
    documents = {}
    for evidence_id in job["evidence"]:
        record = server.request("GET", f"/api/v1/evidence/{evidence_id}/", token=w["psa"]).json()
        blob = server.request("GET", f"/api/v1/evidence/{evidence_id}/content/", token=w["psa"])
        assert hashlib.sha256(blob.body).hexdigest() == record["hash"]
        documents[evidence_id] = json.loads(blob.body)
    return documents


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_a_megabyte_of_any_bytes_is_stored_with_its_evidence(server, world, name):
    w = world
    content, stdout, stderr = SCRIPTS[name]
    script = publish(server, w, content)
    job = run_job(server, w, script["id"])
    agent_once(server, w)
    assert not list((w["state"] / "spool").glob("*.json")), "the result is still waiting in the spool"
    job = server.request("GET", f"/api/v1/script-jobs/{job['id']}/", token=w["psa"]).json()
    assert job["status"] == "succeeded", job["status_reason"]
    assert job["result"]["stdout_truncated"] is False and job["result"]["stderr_truncated"] is False
    [document] = evidence_documents(server, w, job).values()
    result = document["result"]
    for stream, data in (("stdout", stdout), ("stderr", stderr)):
        assert result[f"{stream}_sha256"] == hashlib.sha256(data).hexdigest()
        assert result[f"{stream}_bytes"] == len(data)
        assert unescape(result[stream], result[f"{stream}_escaped"]) == data
        assert job["result"][stream] == result[stream]


def test_a_result_after_the_sweep_declared_it_lost_is_kept(server, psa_receiver, tmp_path):
    w = make_world(server)
    # The script ends once the test says so, after the sweep (a dir the run-as account can read).
    gate = Path(tempfile.mkdtemp(prefix="rmm-gate-"))
    gate.chmod(0o755)
    go = gate / "go"
    script = publish(
        server, w, f"for i in $(seq 600); do [ -e {go} ] && break; sleep 0.1; done\necho finished anyway\n"
    )
    job = run_job(server, w, script["id"])
    log = open(tmp_path / "agent.log", "wb")  # noqa: SIM115 - closed below
    agent = subprocess.Popen(
        [sys.executable, "-m", "rmm_agent", "run", "--state-dir", str(w["state"]), "--once"],
        cwd=ROOT,
        env=server.env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while server.request("GET", f"/api/v1/script-jobs/{job['id']}/", token=w["psa"]).json()["status"] != "running":
            assert time.monotonic() < deadline, "the agent did not lease the job"
            time.sleep(0.2)
        # The server's clock runs past the lease (as after an outage): the minute's sweep marks it lost.
        swept = server.manage(
            "shell",
            "--verbosity",
            "0",
            "-c",
            "from datetime import timedelta\nfrom rmm.engine import services\n"
            "from rmm.engine.models import Instruction\n"
            f"inst = Instruction.objects.get(job_id='{job['id']}')\n"
            "print(services.sweep(inst.lease_expires_at + timedelta(seconds=1)))",
        )
        assert int(swept.stdout.strip()) >= 1, swept.stderr
        assert server.request("GET", f"/api/v1/script-jobs/{job['id']}/", token=w["psa"]).json()["status"] == "lost"
        go.touch()
        assert agent.wait(timeout=60) == 0  # the late result was answered definitively
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        log.close()
        shutil.rmtree(gate)
    output = (tmp_path / "agent.log").read_text()
    assert "delivered late" in output, output
    assert not list((w["state"] / "spool").glob("*.json"))

    shown = server.request("GET", f"/api/v1/script-jobs/{job['id']}/", token=w["psa"]).json()
    assert shown["status"] == "lost"
    assert shown["result"]["stdout"] == "finished anyway\n"
    assert shown["result"]["exit_code"] == 0
    documents = evidence_documents(server, w, shown)
    [late_id] = [key for key, document in documents.items() if document["result"]["late"]]
    [lost] = [document for key, document in documents.items() if key != late_id]
    late = documents[late_id]
    assert lost["result"]["hash"] is None and lost["job"]["status"] == "lost"
    assert late["result"]["late"] is True
    assert late["result"]["hash"] == shown["result"]["hash"]
    assert late["result"]["stdout"] == "finished anyway\n"

    deadline = time.monotonic() + 20
    while not [i for i in psa_receiver.received if i["body"].get("event") == "job.late_result"]:
        assert time.monotonic() < deadline, "the PSA was not told about the late result"
        time.sleep(0.2)
    [told] = [i for i in psa_receiver.received if i["body"].get("event") == "job.late_result"]
    assert told["signed"] and told["body"]["job_id"] == job["id"]
    assert told["body"]["late_result"]["hash"] == shown["result"]["hash"]
    assert told["body"]["late_result"]["evidence"]["id"] == late_id
    assert server.manage("verify_history").returncode == 0
