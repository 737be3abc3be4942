"""The whole path against a real server and the real agent: PSA authority → script job →
signed instruction → agent → result → evidence, and the laws that guard it."""

import hashlib
import json
import uuid

import pytest

from tests.e2e.flows import agent_once, make_world, publish, run_job


@pytest.fixture(scope="module")
def world(server):
    """Three people in their roles, one site with one enrolled agent, approved authority."""
    return make_world(server)


def test_psa_authorised_script_runs_on_the_real_agent(server, world, psa_receiver):
    w = world
    script = publish(server, w, "echo hello from $(hostname)\necho oops >&2\nexit 0\n")
    job = run_job(server, w, script["id"])
    assert job["status"] == "queued"
    agent_once(server, w)
    job = server.request("GET", f"/api/v1/script-jobs/{job['id']}/", token=w["psa"]).json()
    assert job["status"] == "succeeded", job
    assert job["started_at"] and job["completed_at"]
    assert job["result"]["stdout"].startswith("hello from ")
    assert job["result"]["stderr"] == "oops\n"
    assert job["result"]["exit_code"] == 0
    assert len(job["result"]["hash"]) == 64
    [evidence_id] = job["evidence"]
    record = server.request("GET", f"/api/v1/evidence/{evidence_id}/", token=w["psa"]).json()
    blob = server.request("GET", f"/api/v1/evidence/{evidence_id}/content/", token=w["psa"])
    assert blob.status == 200
    assert hashlib.sha256(blob.body).hexdigest() == record["hash"]
    document = json.loads(blob.body)
    assert document["script"]["sha256"] == script["sha256"]
    assert document["authority"]["psa_case_id"] == w["case"]
    assert document["asset"]["hostname"] == w["hostname"]

    told = psa_receiver.wait_for(job["id"])
    assert told["signed"]
    assert told["body"]["status"] == "succeeded"
    assert told["body"]["psa_task_id"] == w["task"]
    assert told["body"]["evidence"] == [{"id": evidence_id, "type": "script_result", "hash": record["hash"]}]

    verified = server.manage("verify_history")
    assert verified.returncode == 0
    assert "events verified" in verified.stdout


def test_failing_script_and_repeated_result(server, world):
    w = world
    script = publish(server, w, "echo bad\nexit 7\n")
    job = run_job(server, w, script["id"])
    agent_once(server, w)
    body = server.request("GET", f"/api/v1/script-jobs/{job['id']}/", token=w["psa"]).json()
    assert body["status"] == "failed"
    assert body["result"]["exit_code"] == 7

    # The agent's own credential resends the same result: accepted once, answered as already received.
    from rmm_agent.results import make_result

    with server.db() as conn:
        instruction_id, containment = conn.execute(
            "SELECT id, containment FROM engine_instruction WHERE job_id = " + ("%s" if server.pg_admin_url else "?"),
            (job["id"] if server.pg_admin_url else job["id"].replace("-", ""),),
        ).fetchone()
    containment = json.loads(containment) if isinstance(containment, str) else containment
    assert containment["killed"] == [], "nothing was left running"
    result = make_result(
        str(uuid.UUID(str(instruction_id))), "completed", exit_code=7, stdout="bad\n", containment=containment
    )
    auth = f"Agent {w['config']['agent_id']}:{w['config']['secret']}"
    again = server.request("POST", "/api/v1/agent/results/", result, auth)
    assert again.status == 200, again.body
    assert again.json()["status"] == "already_received"


def test_tampered_instruction_is_refused_by_the_agent_and_never_runs(server, world, tmp_path):
    w = world
    marker = tmp_path / "ran"
    script = publish(server, w, f"touch {marker}\n")
    job = run_job(server, w, script["id"])
    # A database owner rewrites the queued instruction's content: the signature no longer matches.
    evil = f"touch {marker}; echo pwned\n"
    placeholder = "%s" if server.pg_admin_url else "?"
    job_key = job["id"] if server.pg_admin_url else job["id"].replace("-", "")
    with server.db() as conn:
        query = f"SELECT payload FROM engine_instruction WHERE job_id = {placeholder}"
        row = conn.execute(query, (job_key,)).fetchone()
        payload = json.loads(row[0])
        payload["content"] = evil
        payload["content_sha256"] = hashlib.sha256(evil.encode()).hexdigest()
        conn.execute(
            f"UPDATE engine_instruction SET payload = {placeholder} WHERE job_id = {placeholder}",
            (json.dumps(payload, sort_keys=True, separators=(",", ":")), job_key),
        )
    agent_once(server, w)
    assert not marker.exists(), "a tampered instruction ran"
    body = server.request("GET", f"/api/v1/script-jobs/{job['id']}/", token=w["psa"]).json()
    assert body["status"] == "failed"
    assert "bad_signature" in body["status_reason"]
