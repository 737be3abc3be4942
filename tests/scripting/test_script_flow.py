"""The spine in one process: authority → job → signed instruction → lease → result → evidence."""

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.test import Client

from evidence.models import RmmEvidence
from rmm.engine.models import Instruction
from rmm.history.models import HistoryEvent
from rmm.history.services import verify_chain
from rmm.keys import keyset
from scripting.models import ScriptJob
from tests.helpers import approved_authority, heartbeat, make_agent, post_json, publish, report


@pytest.fixture
def setup(caller, site):
    psa = caller("psa", "psa")
    tech = caller("tech", "technician")
    approver = caller("boss", "approver")
    agent, auth = make_agent(site, "web-01")
    task = approved_authority(site, psa.user)
    return psa, tech, approver, agent, auth, task


def test_psa_authorised_script_runs_and_yields_evidence(setup):
    psa, tech, approver, agent, auth, task = setup
    script = publish(tech, approver)
    r = psa.post(
        "/api/v1/script-jobs/",
        {"script": script["id"], "asset": str(agent.asset_id), "psa_task_id": str(task.pk)},
        format="json",
    )
    assert r.status_code == 201, r.content
    job = r.json()
    assert job["status"] == "queued"

    leased = heartbeat(auth)["instructions"]
    assert len(leased) == 1
    envelope = leased[0]
    signer = keyset.current().get(keyset.INSTRUCTIONS, envelope["key_id"])
    assert signer is not None and signer.key_id == agent.signing_key_id  # the key it was enrolled under
    key = Ed25519PublicKey.from_public_bytes(signer.public_key)
    key.verify(base64.b64decode(envelope["signature"]), envelope["payload"].encode())  # raises if forged
    payload = json.loads(envelope["payload"])
    assert payload["agent_id"] == str(agent.pk)
    assert payload["content"] == "echo hello\n"
    assert payload["content_sha256"] == script["sha256"]
    assert psa.get(f"/api/v1/script-jobs/{job['id']}/").json()["status"] == "running"
    assert heartbeat(auth)["instructions"] == []  # leased once only

    r = report(auth, payload["instruction_id"])
    assert r.status_code == 201, r.content
    done = psa.get(f"/api/v1/script-jobs/{job['id']}/").json()
    assert done["status"] == "succeeded"
    assert done["started_at"] and done["completed_at"]
    assert done["result"]["stdout"] == "hello\n"
    assert done["result"]["exit_code"] == 0
    assert len(done["evidence"]) == 1

    ev = psa.get(f"/api/v1/evidence/{done['evidence'][0]}/").json()
    assert ev["evidence_type"] == "script_result"
    assert ev["related_entity"] == "script_job" and ev["related_id"] == job["id"]
    blob = psa.get(f"/api/v1/evidence/{ev['id']}/content/")
    assert blob.status_code == 200
    assert hashlib.sha256(blob.content).hexdigest() == ev["hash"]
    doc = json.loads(blob.content)
    assert doc["script"]["sha256"] == script["sha256"]
    assert doc["authority"]["psa_task_id"] == str(task.pk)
    assert doc["result"]["stdout"] == "hello\n"
    assert doc["instruction"]["payload"] == envelope["payload"]
    assert verify_chain().ok


def test_non_zero_exit_fails_the_job(setup):
    psa, tech, approver, agent, auth, task = setup
    script = publish(tech, approver, content="exit 3\n")
    job = psa.post(
        "/api/v1/script-jobs/",
        {"script": script["id"], "asset": str(agent.asset_id), "psa_task_id": str(task.pk)},
        format="json",
    ).json()
    inst = json.loads(heartbeat(auth)["instructions"][0]["payload"])
    assert report(auth, inst["instruction_id"], stdout="", exit_code=3).status_code == 201
    body = psa.get(f"/api/v1/script-jobs/{job['id']}/").json()
    assert body["status"] == "failed"
    assert body["result"]["exit_code"] == 3


def test_a_repeated_result_is_accepted_once(setup):
    psa, tech, approver, agent, auth, task = setup
    script = publish(tech, approver)
    psa.post(
        "/api/v1/script-jobs/",
        {"script": script["id"], "asset": str(agent.asset_id), "psa_task_id": str(task.pk)},
        format="json",
    )
    inst = json.loads(heartbeat(auth)["instructions"][0]["payload"])
    assert report(auth, inst["instruction_id"]).status_code == 201
    again = report(auth, inst["instruction_id"])
    assert again.status_code == 200
    assert again.json()["status"] == "already_received"
    different = report(auth, inst["instruction_id"], stdout="other\n")
    assert different.status_code == 409
    assert RmmEvidence.objects.count() == 1
    assert ScriptJob.objects.get().result.stdout == "hello\n"


def test_a_result_whose_hash_does_not_match_is_refused(setup):
    psa, tech, approver, agent, auth, task = setup
    script = publish(tech, approver)
    psa.post(
        "/api/v1/script-jobs/",
        {"script": script["id"], "asset": str(agent.asset_id), "psa_task_id": str(task.pk)},
        format="json",
    )
    inst = json.loads(heartbeat(auth)["instructions"][0]["payload"])
    r = report(auth, inst["instruction_id"], hash="0" * 64)
    assert r.status_code == 400
    assert "hash" in r.json()
    assert ScriptJob.objects.get().status == "running"
    assert HistoryEvent.objects.filter(action="refused.result").exists()


def test_an_agent_never_gets_or_reports_another_agents_instruction(setup, site):
    psa, tech, approver, agent, auth, task = setup
    _other, other_auth = make_agent(site, "web-02")
    script = publish(tech, approver)
    psa.post(
        "/api/v1/script-jobs/",
        {"script": script["id"], "asset": str(agent.asset_id), "psa_task_id": str(task.pk)},
        format="json",
    )
    assert heartbeat(other_auth)["instructions"] == []
    inst = Instruction.objects.get()
    r = report(other_auth, str(inst.pk))
    assert r.status_code == 404
    refusal = HistoryEvent.objects.filter(action="refused.result").last()
    assert refusal.actor == f"agent:{_other.pk}"
    assert heartbeat(auth)["instructions"][0]["payload"] == inst.payload


def test_unknown_or_wrong_agent_credentials_get_401(setup):
    _psa, _tech, _approver, agent, _auth, _task = setup
    for header in ("", f"Agent {agent.pk}:wrong", "Agent not-a-uuid:x", "Bearer x"):
        r = post_json(Client(), "/api/v1/agent/heartbeat/", {}, HTTP_AUTHORIZATION=header)
        assert r.status_code == 401


def test_job_needing_approval_waits_for_a_second_person(setup):
    psa, tech, approver, agent, auth, task = setup
    script = publish(tech, approver, requires_approval=True)
    r = tech.post(
        "/api/v1/script-jobs/",
        {"script": script["id"], "asset": str(agent.asset_id), "psa_task_id": str(task.pk)},
        format="json",
    )
    job = r.json()
    assert job["status"] == "awaiting_approval"
    assert heartbeat(auth)["instructions"] == []
    assert Instruction.objects.count() == 0
    r = approver.post(f"/api/v1/script-jobs/{job['id']}/approve/")
    assert r.status_code == 200, r.content
    assert r.json()["status"] == "queued"
    assert r.json()["decided_by"] == "boss"
    assert len(heartbeat(auth)["instructions"]) == 1
    again = approver.post(f"/api/v1/script-jobs/{job['id']}/approve/")
    assert again.status_code == 409


def test_rejected_job_never_runs(setup):
    psa, tech, approver, agent, auth, task = setup
    script = publish(tech, approver, requires_approval=True)
    job = tech.post(
        "/api/v1/script-jobs/",
        {"script": script["id"], "asset": str(agent.asset_id), "psa_task_id": str(task.pk)},
        format="json",
    ).json()
    assert approver.post(f"/api/v1/script-jobs/{job['id']}/reject/", {}, format="json").status_code == 400
    r = approver.post(f"/api/v1/script-jobs/{job['id']}/reject/", {"reason": "not in the change window"}, format="json")
    assert r.status_code == 200
    assert r.json()["status"] == "rejected"
    assert r.json()["status_reason"] == "not in the change window"
    assert heartbeat(auth)["instructions"] == []
