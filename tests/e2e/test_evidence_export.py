"""A compliance export against the real server: real job evidence, the bundle built by the real
task cluster, downloaded over HTTP and verified offline with its own verify.py."""

import hashlib
import io
import json
import subprocess
import sys
import uuid
import zipfile

from tests.e2e.flows import agent_once, finished_export, make_world, publish, run_job


def test_an_export_is_built_in_the_cluster_and_verifies_offline(server, tmp_path):
    w = make_world(server)
    script = publish(server, w, "echo evidence for the auditor\n")
    job = run_job(server, w, script["id"])
    agent_once(server, w)
    assert server.request("GET", f"/api/v1/script-jobs/{job['id']}/", token=w["psa"]).json()["status"] == "succeeded"
    compliance = server.token(f"comp-{uuid.uuid4().hex[:6]}", "compliance")

    r = server.request("POST", "/api/v1/evidence/exports/", {"site": w["site"]}, compliance)
    assert r.status == 202, r.body
    export_id = r.json()["id"]
    status = finished_export(server, export_id, compliance)
    assert (status["status"], status["progress"], status["item_count"]) == ("done", 100, 1), status

    bundle = server.request("GET", status["download"], token=compliance)
    assert bundle.status == 200 and bundle.headers["Content-Type"] == "application/zip"
    assert hashlib.sha256(bundle.body).hexdigest() == bundle.headers["X-Content-SHA256"] == status["file_hash"]
    with zipfile.ZipFile(io.BytesIO(bundle.body)) as zf:
        zf.extractall(tmp_path)
    folder = tmp_path / f"rmm-evidence-{export_id}"
    key = server.request("GET", "/api/v1/evidence/signing-key/", token=compliance).json()
    done = subprocess.run(
        [sys.executable, "-I", "verify.py", "--fingerprint", key["fingerprint"]],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [item] = json.loads((folder / "manifest.json").read_text())["items"]
    assert (item["related_id"], item["asset"]["hostname"]) == (job["id"], w["hostname"])
    assert item["authority"] == {"psa_case_id": w["case"], "psa_task_id": w["task"]}

    # The PSA collects the case's evidence to attach it when it closes the case.
    listed = server.request("GET", f"/api/v1/psa/cases/{w['case']}/evidence/", token=w["psa"]).json()
    assert [e["hash"] for e in listed["results"]] == [item["hash"]]
    verified = server.manage("verify_history")
    assert verified.returncode == 0 and "anchors checked" in verified.stdout, verified.stdout + verified.stderr
