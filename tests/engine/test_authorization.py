"""Law 7, the engine's routes: every kind of job, batches, kill switches and the agent protocol, for
every role, in-site and out-of-site (harness: tests/support/authorization.py)."""

from __future__ import annotations

import json
import uuid

import pytest
from django.test import Client

from rmm.engine.models import Batch
from tests.support.authorization import (
    APPROVE,
    ENGAGE_KILL_SWITCH,
    EVERYONE,
    IN,
    Row,
    World,
    api,
    callers,
    check,
    ids,
    only,
    page,
    rolled_back,
)


def _batch_resumed(w) -> bool:
    return not Batch.objects.filter(pk=w.ids["batch"], status="halted").exists()


ROWS = [
    # --- every kind of job
    api("GET", "/api/v1/jobs/", 200, shows=(("job_done", IN),)),
    api("GET", "/api/v1/jobs/?psa_case={case}&kind=script", 200, shows=(("job_done", IN),), hidden=("case",)),
    # --- batches: a halted one in alpha, requested by a third party
    api("GET", "/api/v1/batches/{batch}/", 200, 404, hidden=("batch",)),
    api(
        "POST",
        "/api/v1/batches/{batch}/resume/",
        only(APPROVE, 200, 403),
        404,
        hidden=("batch",),
        effect=(_batch_resumed, callers(APPROVE, "in")),
    ),
    # --- kill switches: an asset switch in alpha, and a released global one everybody sees
    api("GET", "/api/v1/kill-switches/", 200, shows=(("switch", IN), ("global_switch", EVERYONE))),
    api("GET", "/api/v1/kill-switches/{switch}/", 200, 404, hidden=("switch",)),
    api("GET", "/api/v1/kill-switches/{global_switch}/", 200, label="global"),
    api(
        "POST",
        "/api/v1/kill-switches/",
        only(ENGAGE_KILL_SWITCH, 201, 403),
        only(ENGAGE_KILL_SWITCH, 400, 403),
        body={"scope": "site", "target": "alpha", "reason": "matrix"},
        label="site",
    ),
    api(
        "POST",
        "/api/v1/kill-switches/",
        only(ENGAGE_KILL_SWITCH, 201, 403),
        only(ENGAGE_KILL_SWITCH, 400, 403),
        body={"scope": "asset", "target": "{asset}", "reason": "matrix"},
        hidden=("asset",),
        label="asset",
    ),
    # Global needs every site; every matrix caller holds one.
    api("POST", "/api/v1/kill-switches/", 403, body={"scope": "global", "reason": "matrix"}, label="global"),
    api(
        "POST",
        "/api/v1/kill-switches/{switch}/release/",
        only(APPROVE, 200, 403),
        404,
        body={"reason": "clear"},
        hidden=("switch",),
    ),
    api(
        "POST",
        "/api/v1/kill-switches/{global_switch}/release/",
        403,  # releasing a global switch needs every site: these callers hold one each
        body={"reason": "again"},
        label="global, already released",
    ),
    # --- the agent protocol: a role's token is no agent credential
    api("POST", "/api/v1/agent/heartbeat/", 401, body={"capacity": 1}),
    api("POST", "/api/v1/agent/results/", 401, body={"instruction_id": "{new_id}"}),
    api(
        "POST", "/api/v1/agent/output/", 401, body={"instruction_id": "{new_id}", "stdout": {"offset": 0, "text": "x"}}
    ),
    api("POST", "/api/v1/agent/heartbeat/", 401, body={"capacity": 1, "wait": 1}, label="held"),
    page("POST", "/api/v1/agent/heartbeat/", 401, anon=401, body={"capacity": 1}, label="session"),
    api("GET", "/api/v1/agent/artefacts/{new_id}/" + "0" * 64 + "/?expires=1&token=x", 401),
    # Enrolment is authorised by an enrolment token alone, never by a role.
    api("POST", "/api/v1/agent/enroll/", 403, anon=403, body={"token": "enr_nope", "facts": {"hostname": "x"}}),
]


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_matrix(row: Row, matrix: World):
    check(row, matrix)


def test_an_agent_credential_is_what_the_agent_protocol_takes(matrix: World):
    client = Client()
    auth = {"HTTP_AUTHORIZATION": matrix.agent_auth, "content_type": "application/json"}
    with rolled_back():
        assert client.post("/api/v1/agent/heartbeat/", json.dumps({"capacity": 1}), **auth).status_code == 200
    with rolled_back():
        unknown = client.post("/api/v1/agent/results/", json.dumps({"instruction_id": str(uuid.uuid4())}), **auth)
        assert unknown.status_code in (400, 404), unknown.content  # authenticated: judged on the body
    with rolled_back():
        body = {"instruction_id": str(uuid.uuid4()), "stdout": {"offset": 0, "text": "x"}}
        unknown = client.post("/api/v1/agent/output/", json.dumps(body), **auth)
        assert unknown.status_code == 404, unknown.content
    with rolled_back():
        held = client.post("/api/v1/agent/heartbeat/", json.dumps({"capacity": 1, "wait": 1}), **auth)
        assert (held.status_code, held.json()["instructions"]) == (200, [])
