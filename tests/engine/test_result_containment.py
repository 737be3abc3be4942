"""A result's optional ``containment`` (what the agent had to kill when the instruction ended):
covered by the result hash, stored with the instruction, named in the evidence and the history;
results without it are accepted as before, and a malformed one is refused with a 400."""

import json

import pytest
from django.test import Client

from rmm.engine.models import Instruction
from rmm.history.models import HistoryEvent
from rmm_agent.protocol import result_hash
from rmm_agent.results import make_result
from scripting.models import ScriptJob
from tests.helpers import heartbeat, post_json, publish
from tests.scripting.test_script_flow import setup  # noqa: F401 - a fixture

KILLED = {"method": "cgroup", "killed": [{"pid": 4242, "command": "sleep 987"}]}


@pytest.fixture
def leased(setup):  # noqa: F811 - the fixture imported above
    """A script job whose instruction its agent has leased: (psa client, agent auth, instruction id)."""
    psa, tech, approver, agent, auth, task = setup
    script = publish(tech, approver)
    r = psa.post(
        "/api/v1/script-jobs/",
        {"script": script["id"], "asset": str(agent.asset_id), "psa_task_id": str(task.pk)},
        format="json",
    )
    assert r.status_code == 201, r.content
    payload = json.loads(heartbeat(auth)["instructions"][0]["payload"])
    return psa, auth, payload["instruction_id"]


def send(auth, body):
    return post_json(Client(), "/api/v1/agent/results/", body, HTTP_AUTHORIZATION=auth)


def evidence_document(psa) -> dict:
    job = psa.get(f"/api/v1/script-jobs/{ScriptJob.objects.get().pk}/").json()
    [evidence] = job["evidence"]
    return json.loads(psa.get(f"/api/v1/evidence/{evidence}/content/").content)


def test_what_the_agent_killed_is_stored_and_in_the_evidence_and_the_history(leased):
    psa, auth, instruction_id = leased
    body = make_result(instruction_id, "completed", exit_code=0, stdout="hello\n", containment=KILLED)
    r = send(auth, body)
    assert r.status_code == 201, r.content
    assert Instruction.objects.get(pk=instruction_id).containment == KILLED
    assert evidence_document(psa)["result"]["containment"] == KILLED
    event = HistoryEvent.objects.filter(action="instruction.result").last()
    assert event.payload["containment"] == KILLED
    assert send(auth, body).json() == {"status": "already_received"}


def test_a_result_without_containment_is_accepted_as_before(leased):
    psa, auth, instruction_id = leased
    r = send(auth, make_result(instruction_id, "completed", exit_code=0, stdout="hello\n"))
    assert r.status_code == 201, r.content
    assert Instruction.objects.get(pk=instruction_id).containment is None
    assert evidence_document(psa)["result"]["containment"] is None
    assert "containment" not in HistoryEvent.objects.filter(action="instruction.result").last().payload


def test_the_result_hash_covers_containment(leased):
    _psa, auth, instruction_id = leased
    body = make_result(instruction_id, "completed", exit_code=0, containment=KILLED)
    assert body["hash"] != result_hash({**body, "containment": None})
    hidden = {**body, "containment": {"method": "cgroup", "killed": []}}  # the kill hidden in transit
    r = send(auth, hidden)
    assert r.status_code == 400
    assert "hash" in r.json()
    stripped = {key: value for key, value in body.items() if key != "containment"}
    assert send(auth, stripped).status_code == 400
    assert Instruction.objects.get(pk=instruction_id).status == "running"


@pytest.mark.parametrize(
    "containment",
    [
        "cgroup",
        {"method": "chroot", "killed": []},
        {"method": "cgroup", "killed": "all"},
        {"method": "cgroup", "killed": [{"pid": True, "command": "x"}]},
        {"method": "cgroup", "killed": [{"pid": 0, "command": "x"}]},
        {"method": "cgroup", "killed": [{"pid": 2**63, "command": "x"}]},
        {"method": "cgroup", "killed": [{"pid": 1, "command": "a\x00b"}]},
        {"method": "cgroup", "killed": [{"pid": 1, "command": "\ud800"}]},
        {"method": "cgroup", "killed": [{"pid": 1, "command": "x" * 1001}]},
        {"method": "cgroup", "killed": [{"pid": 1, "command": "x", "uid": 0}]},
        {"method": "cgroup", "killed": [{"pid": 1, "command": "x"}] * 1001},
        {"method": "cgroup", "killed": [], "omitted": -1},
        {"method": "cgroup", "killed": [], "extra": 1},
    ],
)
def test_a_malformed_containment_is_refused_and_changes_nothing(leased, containment):
    _psa, auth, instruction_id = leased
    body = make_result(instruction_id, "completed", exit_code=0)
    body["containment"] = containment
    try:
        body["hash"] = result_hash(body)  # so the hash is not what refuses it
    except UnicodeEncodeError:
        body["hash"] = "0" * 64  # a lone surrogate cannot be hashed; the shape is checked first
    r = send(auth, body)
    assert r.status_code == 400, r.content
    assert "containment" in r.json()
    assert Instruction.objects.get(pk=instruction_id).status == "running"
