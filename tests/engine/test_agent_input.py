"""Whatever an agent (or anyone) sends to the agent protocol is answered 400 or 413 with JSON,
and changes nothing: never a 500, on SQLite and on PostgreSQL alike (issue 11, defect 5)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from django.test import Client

from rmm.engine.models import Instruction
from rmm.inventory import services as inventory
from rmm.inventory.models import AssetFacts, EnrollmentToken
from rmm_agent.protocol import MAX_BODY_BYTES, result_hash
from rmm_agent.results import make_result
from scripting import services as scripting
from tests.helpers import approved_authority, approved_script, make_agent

ENROLL, HEARTBEAT, RESULTS = "/api/v1/agent/enroll/", "/api/v1/agent/heartbeat/", "/api/v1/agent/results/"


def send(path: str, raw: bytes | str, auth: str = "") -> object:
    """POST raw bytes as an agent would, seeing a server error as the agent would see it."""
    if isinstance(raw, str):
        raw = raw.encode()
    client = Client(raise_request_exception=False)
    return client.post(path, data=raw, content_type="application/json", HTTP_AUTHORIZATION=auth)


def assert_json_error(response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response["Content-Type"] == "application/json"
    return response.json()


@pytest.fixture
def agent(site):
    row, auth = make_agent(site, "web-01")
    return SimpleNamespace(row=row, auth=auth)


@pytest.fixture
def running(caller, site, agent):
    """One script job whose instruction the agent has leased."""
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    task = approved_authority(site, psa.user)
    script = approved_script(tech.user, boss.user)
    job = scripting.create_script_job(psa.user, script_id=script.pk, asset_id=agent.row.asset_id, psa_task_id=task.pk)
    beat = send(HEARTBEAT, json.dumps({"capacity": 1}), agent.auth)
    assert beat.status_code == 200, beat.content
    [envelope] = beat.json()["instructions"]
    return SimpleNamespace(
        job=job, psa=psa, instruction_id=json.loads(envelope["payload"])["instruction_id"], auth=agent.auth
    )


# --- the body ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [ENROLL, HEARTBEAT])
def test_a_body_nested_100000_deep_is_a_400(agent, path):
    deep = "[" * 100_000 + "]" * 100_000
    assert "detail" in assert_json_error(send(path, deep, agent.auth), 400)
    wrapped = '{"facts": ' + "[" * 100_000 + "]" * 100_000 + "}"
    assert "detail" in assert_json_error(send(path, wrapped, agent.auth), 400)


@pytest.mark.parametrize("path", [ENROLL, HEARTBEAT, RESULTS])
def test_a_body_over_the_protocols_bound_gets_a_json_413(agent, path):
    raw = b'{"pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    body = assert_json_error(send(path, raw, agent.auth), 413)
    assert str(MAX_BODY_BYTES) in body["detail"]
    assert body["max_bytes"] == MAX_BODY_BYTES


def test_a_result_body_up_to_the_bound_is_accepted(running):
    """Larger than Django's DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB), within the protocol's bound."""
    body = make_result(running.instruction_id, "completed", exit_code=0)
    body.update(stdout="\n" * 1_700_000, stdout_encoding="utf-8")  # sent as text: 3.4 MB of JSON
    body["hash"] = result_hash(body)
    raw = json.dumps(body).encode()
    assert 2_621_440 < len(raw) <= MAX_BODY_BYTES
    assert send(RESULTS, raw, running.auth).status_code == 201
    assert running.job.__class__.objects.get(pk=running.job.pk).result.stdout == "\n" * 1_700_000


@pytest.mark.parametrize("capacity", ["Infinity", "-Infinity", "NaN", "1e400", '"lots"', "-1", "true", "null"])
def test_a_capacity_that_is_no_count_is_a_hint_ignored(caller, site, agent, capacity):
    """Like the heartbeat's other hints: counted as 1 (the default), never a 500."""
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    task = approved_authority(site, psa.user)
    script = approved_script(tech.user, boss.user)
    for _ in range(2):
        scripting.create_script_job(psa.user, script_id=script.pk, asset_id=agent.row.asset_id, psa_task_id=task.pk)
    response = send(HEARTBEAT, f'{{"capacity": {capacity}}}', agent.auth)
    assert response.status_code == 200, response.content
    assert len(response.json()["instructions"]) <= 1


# --- facts and other agent strings ------------------------------------------------------------

BAD_FACTS = [
    {"hostname": "web\u000001"},
    {"hostname": "web-01", "os": "Linux\ud800"},
    {"hostname": "web-01", "kernel\u0000": "6.1"},
    {"hostname": "web-01", "\udcff": "x"},
    {"hostname": "web-01", "addresses": ["10.0.0.1", {"deep": ["\u0000"]}]},
    {"hostname": "web-01", "boot": 1e400},
    {"hostname": "h" * 256},
    {"hostname": "web-01", "blob": "x" * 70_000},
    {"hostname": "web-01", "nested": json.loads("[" * 40 + "]" * 40)},
]


@pytest.mark.parametrize("facts", BAD_FACTS)
def test_facts_that_cannot_be_stored_are_a_400_and_change_nothing(agent, facts):
    before = AssetFacts.objects.get(asset_id=agent.row.asset_id)
    raw = json.dumps({"capacity": 1, "facts": facts, "facts_hash": "x"}).replace("Infinity", "1e400")
    answer = assert_json_error(send(HEARTBEAT, raw, agent.auth), 400)
    assert "facts" in answer
    after = AssetFacts.objects.get(asset_id=agent.row.asset_id)
    assert (after.facts, after.facts_hash) == (before.facts, before.facts_hash)


@pytest.mark.parametrize("facts", BAD_FACTS)
def test_an_enrollment_refused_for_its_facts_does_not_use_up_its_token(site, facts):
    token, secret = inventory.create_enrollment_token(site, max_uses=1)
    raw = json.dumps({"token": secret, "facts": facts}).replace("Infinity", "1e400")  # parsed as infinite
    answer = assert_json_error(send(ENROLL, raw), 400)
    assert "facts" in answer
    assert EnrollmentToken.objects.get(pk=token.pk).use_count == 0
    good = send(ENROLL, json.dumps({"token": secret, "facts": {"hostname": "web-02"}}))
    assert good.status_code == 201, good.content
    assert EnrollmentToken.objects.get(pk=token.pk).use_count == 1


@pytest.mark.parametrize("version", ["0.1\u0000", "\ud800"])
def test_an_agent_version_that_cannot_be_stored_is_a_400(agent, version):
    answer = assert_json_error(send(HEARTBEAT, json.dumps({"capacity": 1, "agent_version": version}), agent.auth), 400)
    assert "agent_version" in answer


def test_a_long_agent_version_is_cut_to_50_characters(agent):
    assert send(HEARTBEAT, json.dumps({"capacity": 1, "agent_version": "9" * 80}), agent.auth).status_code == 200
    agent.row.refresh_from_db()
    assert agent.row.version == "9" * 50


# --- results ----------------------------------------------------------------------------------


def post_result(running, **fields) -> object:
    body = make_result(running.instruction_id, "completed", exit_code=0, stdout="ok\n")
    body.update(fields)
    body["hash"] = result_hash(body)
    return send(RESULTS, json.dumps(body), running.auth)


@pytest.mark.parametrize("exit_code", [2**31, -(2**31) - 1, 2**64, True, 1.5, "0"])
def test_an_exit_code_outside_32_bits_is_a_400_naming_the_field(running, exit_code):
    answer = assert_json_error(post_result(running, exit_code=exit_code), 400)
    assert "exit_code" in answer
    assert Instruction.objects.get(pk=running.instruction_id).status == "running"


def test_the_32_bit_bounds_are_accepted(running):
    assert post_result(running, exit_code=-(2**31)).status_code == 201


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("stdout", "lone \ud800 surrogate"),
        ("stderr", "\udcff"),
        ("reason", "a\u0000b"),
        ("reason", "\ud800"),
        ("reason", 5),
        ("stdout_truncated", "yes"),
        ("stdout_encoding", "latin-1"),
        ("truncated_for_delivery", 1),
        ("original_hash", "not-a-hash"),
    ],
)
def test_result_fields_that_cannot_be_stored_are_a_400(running, field, value):
    body = make_result(running.instruction_id, "completed", exit_code=0, stdout="ok\n")
    body[field] = value
    if field not in ("stdout", "stderr"):  # a lone surrogate cannot even be hashed as UTF-8
        body["hash"] = result_hash(body)
    answer = assert_json_error(send(RESULTS, json.dumps(body), running.auth), 400)
    assert field in answer
    assert Instruction.objects.get(pk=running.instruction_id).status == "running"


def test_base64_that_does_not_decode_is_a_400(running):
    answer = assert_json_error(post_result(running, stdout="not base64!", stdout_encoding="base64"), 400)
    assert "stdout" in answer


@pytest.mark.parametrize("instruction_id", ["a\u0000b", "\ud800", 12, None])
def test_an_instruction_id_that_is_no_uuid_is_answered_not_500(agent, instruction_id):
    body = make_result("x", "completed", exit_code=0)
    body["instruction_id"] = instruction_id
    response = send(RESULTS, json.dumps(body), agent.auth)
    assert response.status_code in (400, 404), response.content
    assert response["Content-Type"] == "application/json"
