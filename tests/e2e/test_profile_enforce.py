"""Configuration enforcement end to end (issue 15, "Done when"), as root: a real server and task
cluster, the real agent, the built-in ``linux.file_line`` and ``linux.sysctl`` keys approved by a
second person, over a file in a temporary directory and a sysctl file under a proc_root the test
controls. An audit finds drift and changes nothing (drift_report, drift.detected at the stand-in
PSA); a new revision puts the items in enforce mode, which returns the assignment to awaiting
approval, and an audit then still only reports; approved by a second person, the next audit's drift
makes enforcement jobs on the assignment's PSA task, which the agent runs (set script, then a fresh
read); the re-read finds them compliant, the files hold the desired values, the PSA hears
drift.resolved, and the evidence of before, action and after is in an export that verifies
offline."""

from __future__ import annotations

import os
import uuid

import pytest

from tests.e2e.flows import agent_once, make_world, tokens, wait_for
from tests.e2e.test_key_rotation import export_bundle, verify_offline
from tests.e2e.test_profile_audit import approve_builtin_keys, audit, endpoint_files, evidence_document, snapshot

__all__ = ["endpoint_files"]  # the fixture, shared with the audit's test

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the set scripts run privileged: the agent needs root")


def items(sshd, root, mode: str) -> list[dict]:
    return [
        {
            "config_key": "linux.file_line",
            "parameters": {"path": str(sshd), "key": "PermitRootLogin"},
            "desired_value": "no",
            "comparison": "equals",
            "enforcement_mode": mode,
        },
        {
            "config_key": "linux.sysctl",
            "parameters": {"name": "net.ipv4.ip_forward", "proc_root": str(root / "proc")},
            "desired_value": "0",
            "comparison": "equals",
            "enforcement_mode": mode,
        },
    ]


def states(server, w) -> list[tuple]:
    rows = server.request("GET", f"/api/v1/assets/{w['asset']}/compliance/", token=w["tech"]).json()["results"]
    return [(r["config_key"], r["observed_value"], r["state"]) for r in rows]


def enforcement_jobs(server, w, assignment: str) -> list[dict]:
    url = f"/api/v1/enforcement-jobs/?assignment={assignment}"
    return server.request("GET", url, token=w["psa"]).json()["results"]


def test_drift_is_enforced_under_the_approved_assignment_and_proven_by_a_fresh_read(
    server, psa_receiver, endpoint_files, tmp_path
):
    root, sshd, forward = endpoint_files
    approve_builtin_keys(server, ["linux.file_line", "linux.sysctl"])
    w = make_world(server)
    tech = tokens(server, {f"enforce-tech-{uuid.uuid4().hex[:6]}": "technician"})[0]
    r = server.request(
        "POST",
        "/api/v1/profiles/",
        {"name": f"enforced-{uuid.uuid4().hex[:6]}", "profile_type": "hardening", "items": items(sshd, root, "audit")},
        tech,
    )
    assert r.status == 201, r.body
    profile = r.json()["id"]
    r = server.request(
        "POST",
        "/api/v1/profile-assignments/",
        {"profile": profile, "asset": w["asset"], "psa_task_id": w["task"]},
        tech,
    )
    assert r.status == 201 and r.json()["status"] == "active", r.body
    assignment = r.json()["id"]
    before = snapshot(sshd, forward)

    # Audit mode: drift found and reported, nothing changed.
    first = audit(server, w, assignment)
    assert snapshot(sshd, forward) == before
    assert [state for _, _, state in states(server, w)] == ["non_compliant", "non_compliant"]
    drift = server.request("GET", f"/api/v1/drift-events/?audit_job={first}", token=w["psa"]).json()["results"]
    assert len(drift) == 2
    report = evidence_document(server, w, drift[0]["evidence"])
    assert report["evidence_type"] == "drift_report" and report["audit_job"] == first
    wait_for(
        lambda: any(
            r["body"]["event"] == "drift.detected" and r["body"]["audit_job"] == first for r in psa_receiver.received
        ),
        30,
        "drift.detected at the PSA",
    )

    # A new revision in enforce mode: the assignment awaits a second person, and its drift is
    # still only reported.
    r = server.request("POST", f"/api/v1/profiles/{profile}/revisions/", {"items": items(sshd, root, "enforce")}, tech)
    assert r.status == 201 and r.json()["revision"] == 2, r.body
    shown = server.request("GET", f"/api/v1/profile-assignments/{assignment}/", token=tech).json()
    assert shown["status"] == "awaiting_approval"
    audit(server, w, assignment)
    assert snapshot(sshd, forward) == before and enforcement_jobs(server, w, assignment) == []

    # Approved by a second person: the next audit's drift is enforced.
    r = server.request("POST", f"/api/v1/profile-assignments/{assignment}/approve/", None, w["approver"])
    assert r.status == 200 and r.json()["status"] == "active", r.body
    third = audit(server, w, assignment)
    wait_for(lambda: len(enforcement_jobs(server, w, assignment)) == 2, 30, "two enforcement jobs")
    jobs = enforcement_jobs(server, w, assignment)
    assert {(j["status"], j["psa_task_id"], j["audit_job"]) for j in jobs} == {("queued", w["task"], third)}
    assert sorted((j["config_key"], j["before_value"]) for j in jobs) == [
        ("linux.file_line", "yes"),
        ("linux.sysctl", "1"),
    ]
    agent_once(server, w)  # one instruction at a time per asset
    agent_once(server, w)

    done = enforcement_jobs(server, w, assignment)
    assert {(j["status"], j["status_reason"], j["after_state"]) for j in done} == {("succeeded", "", "compliant")}, done
    assert sshd.read_bytes() == b"# managed elsewhere\nPort 22\nPermitRootLogin no\n"
    assert forward.read_bytes().strip() == b"0"
    assert states(server, w) == [("linux.file_line", "no", "compliant"), ("linux.sysctl", "0", "compliant")]
    for job in done:
        wait_for(
            lambda job=job: any(
                r["body"]["event"] == "drift.resolved" and r["body"].get("enforcement_job") == job["id"]
                for r in psa_receiver.received
            ),
            30,
            "drift.resolved at the PSA",
        )

    # Evidence of before (the audit's read), action (the set script) and after (the re-read).
    proofs = {}
    for job in done:
        listed = server.request("GET", f"/api/v1/evidence/?related_id={job['id']}", token=w["psa"]).json()["results"]
        [record] = [e for e in listed if e["evidence_type"] == "enforcement_result"]
        document = evidence_document(server, w, record["id"])
        assert document["before"]["observed_value"] == job["before_value"]
        assert document["before"]["evidence"] == job["before_evidence"]
        assert document["action"]["set_script"]["sha256"] and document["action"]["run"]["exit_code"] == 0
        assert document["after"]["state"] == "compliant" and document["instruction"]["payload"]
        proofs[job["id"]] = (record["id"], job["before_evidence"])
    compliance = server.token(f"comp-{uuid.uuid4().hex[:6]}", "compliance")
    _, bundle = export_bundle(server, w, compliance, tmp_path / "export")
    manifest = (bundle / "manifest.json").read_text()
    assert all(after in manifest and before in manifest for after, before in proofs.values())
    checked = verify_offline(bundle)
    assert checked.returncode == 0 and "VERDICT: PASS" in checked.stdout, checked.stdout
