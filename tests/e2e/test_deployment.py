"""A package deployed end to end, as root: a .deb built in the test with dpkg-deb (a name no real
package uses), uploaded through the API, approved by a second person who holds the privileged
permission, deployed to the real agent, which fetches it by its hash and installs it with dpkg;
the detection read confirms it, and the evidence records both steps. A blob altered in the store
after approval is refused by the agent: nothing is installed. Everything is purged afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.e2e.flows import agent_once, make_world, privileged_approver, upload_package
from tests.e2e.server import Server
from tests.e2e.test_key_rotation import export_bundle, verify_offline

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dpkg -i needs root (CI runs as root)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("deployment")).start()
    yield srv
    srv.stop()


def rule(name: str) -> dict:
    return {"type": "package", "name": name, "version": "1.0-1"}


def installed(name: str) -> bool:
    done = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", name], capture_output=True, text=True)
    return done.stdout == "installed"


def deployed(server: Server, w: dict, package_id: str, action: str = "install") -> str:
    r = server.request(
        "POST",
        "/api/v1/deployments/",
        {"package": package_id, "assets": [w["asset"]], "psa_task_id": w["task"], "action": action},
        w["psa"],
    )
    assert r.status == 201, r.body
    answer = r.json()
    assert answer["psa_case_id"] and answer["count"] == 1
    return answer["jobs"][0]["id"]


def job(server: Server, w: dict, job_id: str) -> dict:
    return server.request("GET", f"/api/v1/deployment-jobs/{job_id}/", token=w["psa"]).json()


def test_a_deb_is_uploaded_approved_deployed_installed_and_proven(server, deb, tmp_path):
    if shutil.which("dpkg-deb") is None:
        pytest.fail("dpkg-deb is needed (Debian's dpkg)")
    name, path = deb
    w = make_world(server)
    package = upload_package(server, w["tech"], name, path.read_bytes(), detection=rule(name))
    assert package["status"] == "pending"
    # The author may not approve; an approver needs the privileged permission (it installs as root).
    assert server.request("POST", f"/api/v1/packages/{package['id']}/approve/", token=w["tech"]).status == 403
    assert server.request("POST", f"/api/v1/packages/{package['id']}/approve/", token=w["approver"]).status == 403
    r = server.request("POST", f"/api/v1/packages/{package['id']}/approve/", token=privileged_approver(server))
    assert r.status == 200 and r.json()["status"] == "approved", r.body

    job_id = deployed(server, w, package["id"])
    agent_once(server, w)  # fetch by hash, dpkg -i
    agent_once(server, w)  # the detection read
    done = job(server, w, job_id)
    assert done["status"] == "succeeded", done
    assert installed(name)
    assert [s["step"] for s in done["steps"]] == [0, 1]
    assert done["steps"][1]["structured"] == {
        "installed": True,
        "version": "1.0-1",
        "wanted": "1.0-1",
        "expect": "installed",
    }
    assert done["executed_at"] and len(done["evidence"]) == 2
    proof = server.request("GET", f"/api/v1/evidence/{done['evidence'][1]}/content/", token=w["psa"]).json()
    assert proof["evidence_type"] == "deployment_result" and proof["package"]["sha256"] == package["hash"]

    # The site's evidence, exported, verifies offline with the standard library alone.
    compliance = server.token(f"comp-{uuid.uuid4().hex[:6]}", "compliance")
    _, bundle = export_bundle(server, w, compliance, tmp_path / "export")
    manifest = (bundle / "manifest.json").read_text()
    assert all(evidence_id in manifest for evidence_id in done["evidence"])
    checked = verify_offline(bundle)
    assert checked.returncode == 0 and "VERDICT: PASS" in checked.stdout, checked.stdout

    # The rollback: an uninstall job under the same authority, proven by a read that finds it gone.
    undo = deployed(server, w, package["id"], action="uninstall")
    agent_once(server, w)  # dpkg -r
    agent_once(server, w)  # the detection read
    undone = job(server, w, undo)
    assert undone["status"] == "succeeded" and undone["action"] == "uninstall", undone
    assert not installed(name)


def test_a_package_altered_in_the_store_after_approval_is_refused_and_nothing_is_installed(server, deb):
    name, path = deb
    w = make_world(server)
    package = upload_package(server, w["tech"], name, path.read_bytes(), detection=rule(name))
    r = server.request("POST", f"/api/v1/packages/{package['id']}/approve/", token=privileged_approver(server))
    assert r.status == 200, r.body
    digest = package["hash"]
    stored = Path(server.env["RMM_VAR_DIR"]) / "evidence" / "packages" / digest[:2] / f"{digest}.bin"
    original = stored.read_bytes()
    stored.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    try:
        job_id = deployed(server, w, package["id"])
        agent_once(server, w)
        done = job(server, w, job_id)
        assert done["status"] == "failed"
        assert done["status_reason"] == "step 1 of 2 failed: agent refused the instruction: artefact_mismatch"
        assert not installed(name)
    finally:
        stored.write_bytes(original)
