"""A configuration audit end to end (issue 15): a real server and task cluster, the real agent, the
built-in Linux keys approved by a second person, a profile with a file-line item over a file in a
temporary directory and a sysctl item under a proc_root the test controls. The audit finds drift;
the files' bytes are unchanged; the drift_report evidence verifies by its hash; the stand-in PSA
on 127.0.0.1 was told drift.detected; a fix made by hand is then seen as drift.resolved."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.e2e.flows import agent_once, assign_profile, make_world, tokens, wait_for


@pytest.fixture
def endpoint_files():
    """Files the audit reads, in a folder the agent's run-as account may read (not pytest's 0700 one)."""
    root = Path(tempfile.mkdtemp(prefix="rmm-audit-"))
    root.chmod(0o755)
    (root / "proc" / "net" / "ipv4").mkdir(parents=True)
    for folder in (root / "proc", root / "proc" / "net", root / "proc" / "net" / "ipv4"):
        folder.chmod(0o755)
    sshd = root / "sshd_config"
    sshd.write_bytes(b"# managed elsewhere\nPort 22\nPermitRootLogin yes\n")
    forward = root / "proc" / "net" / "ipv4" / "ip_forward"
    forward.write_bytes(b"1\n")
    for path in (sshd, forward):
        path.chmod(0o644)
    yield root, sshd, forward
    shutil.rmtree(root)


def snapshot(*paths: Path) -> list[tuple[bytes, int, int]]:
    return [(path.read_bytes(), path.stat().st_mtime_ns, path.stat().st_mode) for path in paths]


def approve_builtin_keys(server, names: list[str]) -> None:
    """A technician loads the shipped keys; an approver allowed to approve privileged scripts (the
    set scripts) approves each named key and its two scripts."""
    tag = uuid.uuid4().hex[:6]
    tech_name, boss_name = f"keys-tech-{tag}", f"keys-boss-{tag}"
    _, boss = tokens(server, {tech_name: "technician", boss_name: "approver"})
    server.manage("rmm_config_keys_builtin", "--author", tech_name)
    grant = (
        "from django.contrib.auth import get_user_model; from django.contrib.auth.models import Permission; "
        f"get_user_model().objects.get(username={boss_name!r}).user_permissions.add("
        "Permission.objects.get(codename='approve_privileged'))"
    )
    server.manage("shell", "-c", grant)
    for name in names:  # the newest version of each (another test of the server may have approved it)
        key = server.request("GET", f"/api/v1/config-keys/?name={name}", token=boss).json()["results"][0]
        for path, artefact in (("scripts", key["read_script"]), ("scripts", key["set_script"]), ("config-keys", key)):
            if artefact.get("approval_status", artefact.get("status")) == "pending":
                r = server.request("POST", f"/api/v1/{path}/{artefact['id']}/approve/", token=boss)
                assert r.status == 200, r.body


def audit(server, w, assignment: str) -> str:
    r = server.request("POST", f"/api/v1/profile-assignments/{assignment}/audit/", token=w["psa"])
    assert r.status == 202, r.body
    [job] = r.json()["jobs"]
    agent_once(server, w)
    return job


def evidence_document(server, w, evidence_id: str) -> dict:
    record = server.request("GET", f"/api/v1/evidence/{evidence_id}/", token=w["psa"]).json()
    blob = server.request("GET", f"/api/v1/evidence/{evidence_id}/content/", token=w["psa"])
    assert hashlib.sha256(blob.body).hexdigest() == record["hash"]
    return json.loads(blob.body)


def test_an_audit_finds_drift_changes_nothing_and_tells_the_psa(server, psa_receiver, endpoint_files):
    root, sshd, forward = endpoint_files
    approve_builtin_keys(server, ["linux.file_line", "linux.sysctl"])
    w = make_world(server)
    items = [
        {
            "config_key": "linux.file_line",
            "parameters": {"path": str(sshd), "key": "PermitRootLogin"},
            "desired_value": "no",
            "comparison": "equals",
        },
        {
            "config_key": "linux.sysctl",
            "parameters": {"name": "net.ipv4.ip_forward", "proc_root": str(root / "proc")},
            "desired_value": "0",
            "comparison": "equals",
        },
    ]
    tech = tokens(server, {f"profile-tech-{uuid.uuid4().hex[:6]}": "technician"})[0]
    r = server.request(
        "POST",
        "/api/v1/profiles/",
        {"name": f"baseline-{uuid.uuid4().hex[:6]}", "profile_type": "hardening", "items": items},
        tech,
    )
    assert r.status == 201, r.body
    profile = r.json()
    assignment = assign_profile(server, w, profile["id"])
    before = snapshot(sshd, forward)

    job = audit(server, w, assignment)

    detail = server.request("GET", f"/api/v1/audit-jobs/{job}/", token=w["psa"]).json()
    assert (detail["status"], detail["status_reason"]) == ("succeeded", ""), detail
    assert snapshot(sshd, forward) == before  # an audit changes nothing
    rows = server.request("GET", f"/api/v1/assets/{w['asset']}/compliance/", token=w["tech"]).json()["results"]
    assert [(r["config_key"], r["desired_value"], r["observed_value"], r["state"]) for r in rows] == [
        ("linux.file_line", "no", "yes", "non_compliant"),
        ("linux.sysctl", "0", "1", "non_compliant"),
    ]
    drift = server.request("GET", f"/api/v1/drift-events/?asset={w['asset']}", token=w["psa"]).json()["results"]
    assert sorted((d["config_key"], d["from_state"], d["to_state"]) for d in drift) == [
        ("linux.file_line", "", "non_compliant"),
        ("linux.sysctl", "", "non_compliant"),
    ]
    # The audit's own evidence: the agent's structured result, and every verdict; the
    # observations cite it.
    audit_record = rows[0]["evidence"]
    assert audit_record and {r["evidence"] for r in rows} == {audit_record}
    document = evidence_document(server, w, audit_record)
    assert document["evidence_type"] == "configuration_audit" and document["instruction"]["privileged"] is False
    assert document["result"]["structured"]["format"] == "rmm.profile_audit/1"
    # The drift report, and the PSA told of it.
    report_id = drift[0]["evidence"]
    report = evidence_document(server, w, report_id)
    assert report["evidence_type"] == "drift_report" and report["audit_job"] == job
    assert sorted(change["observed_value"] for change in report["changes"]) == ["1", "yes"]
    told = wait_for(
        lambda: next(
            (
                r
                for r in psa_receiver.received
                if r["body"]["event"] == "drift.detected" and r["body"]["audit_job"] == job
            ),
            None,
        ),
        30,
        "drift.detected at the PSA",
    )
    assert told["signed"] and told["body"]["evidence_id"] == report_id and len(told["body"]["items"]) == 2

    # Someone fixes the line by hand; the next audit sees it comply again: drift.resolved, once.
    sshd.write_bytes(b"# managed elsewhere\nPort 22\nPermitRootLogin no\n")
    second = audit(server, w, assignment)
    rows = server.request("GET", f"/api/v1/assets/{w['asset']}/compliance/", token=w["tech"]).json()["results"]
    assert [r["state"] for r in rows] == ["compliant", "non_compliant"]
    drift = server.request("GET", f"/api/v1/drift-events/?audit_job={second}", token=w["psa"]).json()["results"]
    assert [(d["config_key"], d["from_state"], d["to_state"]) for d in drift] == [
        ("linux.file_line", "non_compliant", "compliant")
    ]
    wait_for(
        lambda: any(
            r["body"]["event"] == "drift.resolved" and r["body"]["audit_job"] == second for r in psa_receiver.received
        ),
        30,
        "drift.resolved at the PSA",
    )
    assert os.stat(forward).st_mode & 0o777 == 0o644
