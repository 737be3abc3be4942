"""The test-only three-step kind (tests/stepkind/) end to end: a real server with the kind
installed, the real agent as a subprocess running each step only after the one before, and the
evidence of every step read back through the API."""

import hashlib
import json

import pytest

from tests.e2e.flows import agent_once, make_world
from tests.e2e.server import Server


@pytest.fixture(scope="module")
def step_server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("steps"), {"DJANGO_SETTINGS_MODULE": "tests.settings"}).start()
    yield srv
    srv.stop()


def show(server, job_id: str) -> dict:
    return json.loads(server.manage("stepkind_job", "show", job_id).stdout)


def documents(server, w, job: dict) -> list[dict]:
    """The job's evidence documents, each checked against the hash its record holds."""
    found = []
    for evidence_id in job["evidence"]:
        record = server.request("GET", f"/api/v1/evidence/{evidence_id}/", token=w["psa"]).json()
        blob = server.request("GET", f"/api/v1/evidence/{evidence_id}/content/", token=w["psa"])
        assert hashlib.sha256(blob.body).hexdigest() == record["hash"]
        assert record["evidence_type"] == "step_result"
        found.append(json.loads(blob.body))
    return found


def create(server, w, steps: int, *fail: int) -> str:
    return server.manage("stepkind_job", "create", w["hostname"], w["task"], str(steps), *map(str, fail)).stdout.strip()


def test_three_steps_run_one_after_another_through_the_real_agent_with_evidence_for_each(step_server):
    w = make_world(step_server)
    job_id = create(step_server, w, 3)
    for n in range(3):
        job = show(step_server, job_id)
        assert [i["status"] for i in job["instructions"]] == ["succeeded"] * n + ["queued"]
        agent_once(step_server, w)  # leases the one queued step, runs it, reports
    job = show(step_server, job_id)
    assert job["status"] == "succeeded", job
    assert [i["step"] for i in job["instructions"]] == [0, 1, 2]
    docs = documents(step_server, w, job)
    assert [doc["step"] for doc in docs] == [0, 1, 2]
    assert [doc["result"]["stdout"] for doc in docs] == ["step 0\n", "step 1\n", "step 2\n"]
    assert [doc["instruction"]["id"] for doc in docs] == [i["id"] for i in job["instructions"]]
    assert [doc["job"]["status"] for doc in docs] == ["running", "running", "succeeded"]


def test_a_failing_middle_step_stops_the_job_through_the_real_agent(step_server):
    w = make_world(step_server)
    job_id = create(step_server, w, 3, 1)
    agent_once(step_server, w)
    agent_once(step_server, w)
    agent_once(step_server, w)  # nothing more to lease
    job = show(step_server, job_id)
    assert (job["status"], job["status_reason"]) == ("failed", "step 2 of 3 failed")
    assert [i["status"] for i in job["instructions"]] == ["succeeded", "failed"]
    assert [doc["result"]["exit_code"] for doc in documents(step_server, w, job)] == [0, 1]
