"""The REST API's contract at its edges: bad input answers 4xx in the one error shape, never 500,
and the OpenAPI schema says so. The schema-driven fuzzing of every operation is
tests/e2e/test_api_fuzz.py; these are the cases it found, pinned, and quick to run."""

import json
import uuid

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from rmm.engine.services import kill_switches
from rmm.history.models import HistoryEvent
from rmm.inventory.models import Site
from scripting import services as scripting
from scripting.models import Script
from tests.helpers import approved_authority, approved_script, make_agent

LISTS = (
    "/api/v1/sites/",
    "/api/v1/assets/",
    "/api/v1/agents/",
    "/api/v1/scripts/",
    "/api/v1/script-jobs/",
    "/api/v1/jobs/",
    "/api/v1/evidence/",
    "/api/v1/evidence/exports/",
    "/api/v1/evidence/legal-holds/",
    "/api/v1/kill-switches/",
    "/api/v1/config-keys/",
    "/api/v1/profiles/",
)
NOT_AN_OBJECT = [b"[1, 2]", b"[]", b'"a string"', b"null", b"42", b"true"]


@pytest.fixture
def world(caller, site):
    admin = caller("root", "admin")
    tech = caller("tech", "technician")
    psa = caller("psa", "psa")
    boss = caller("boss", "approver")
    agent, _auth = make_agent(site, "web-01")
    task = approved_authority(site, psa.user)
    script = scripting.create_script(tech.user, name="draft", language="sh", content="echo draft\n")
    gated = approved_script(tech.user, boss.user, name="gated", requires_approval=True)
    job = scripting.create_script_job(psa.user, script_id=gated.pk, asset_id=agent.asset_id, psa_task_id=task.pk)
    switch = kill_switches.engage(tech.user, scope="asset", target=str(agent.asset_id), reason="drill")
    return {
        "admin": admin,
        "technician": tech,
        "psa": psa,
        "agent": agent,
        "script": script,
        "job": job,
        "switch": switch,
    }


def decisions(w) -> list[str]:
    """Every action that takes a reason."""
    return [
        f"/api/v1/scripts/{w['script'].pk}/reject/",
        f"/api/v1/script-jobs/{w['job'].pk}/reject/",
        f"/api/v1/kill-switches/{w['switch'].pk}/release/",
        f"/api/v1/agents/{w['agent'].pk}/revoke/",
    ]


def is_error(response) -> bool:
    """The one error shape: a JSON object of ``detail`` or of fields with their reasons."""
    body = response.json()
    return (
        isinstance(body, dict)
        and body
        and all(isinstance(v, str) if k == "detail" else isinstance(v, list | dict) for k, v in body.items())
    )


# --- request bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["admin", "technician", "psa"])
@pytest.mark.parametrize("body", NOT_AN_OBJECT)
def test_a_body_that_is_not_an_object_is_400_before_any_role_check(world, role, body):
    for url in decisions(world):
        r = world[role].client.generic("POST", url, body, content_type="application/json")
        assert r.status_code == 400, (role, url, body, r.status_code)
        assert r.json() == {"detail": "The body must be a JSON object."}
    assert not HistoryEvent.objects.filter(action__startswith="refused.").exists()
    world["script"].refresh_from_db()
    assert world["script"].approval_status == "pending"


def test_a_body_nested_too_deep_is_400(world):
    body = b"[" * 100_000 + b"]" * 100_000
    for url in [*decisions(world), "/api/v1/scripts/", "/api/v1/script-jobs/"]:
        r = world["admin"].client.generic("POST", url, body, content_type="application/json")
        assert r.status_code == 400, (url, r.status_code)
        assert is_error(r)


def send(client, method, url, body: dict):
    """A JSON body as any client may write it: lone surrogates as their ``\\uXXXX`` escapes."""
    return client.generic(method, url, json.dumps(body), content_type="application/json")


@pytest.mark.parametrize(
    "text", ["nul \x00 byte", "lone \ud800 surrogate", "\udfff"], ids=["nul", "high surrogate", "low surrogate"]
)
def test_text_no_database_can_hold_is_refused_and_named(world, text):
    admin = world["admin"].client
    r = send(admin, "PUT", f"/api/v1/psa/cases/{uuid.uuid4()}/", {"title": text, "status": "open", "site": "alpha"})
    assert r.status_code == 400 and list(r.json()) == ["title"], r.content
    r = send(admin, "POST", "/api/v1/scripts/", {"name": "n", "language": "sh", "content": f"echo {text}\n"})
    assert r.status_code == 400 and list(r.json()) == ["content"], r.content
    for url in decisions(world):
        r = send(admin, "POST", url, {"reason": text})
        assert r.status_code == 400 and list(r.json()) == ["reason"], (url, r.content)
    assert not Script.objects.filter(name="n").exists()


@pytest.mark.parametrize("text", ["\ud800", "\x00", "\u2028"])
def test_an_error_that_quotes_the_input_back_is_still_json(world, text):
    r = send(world["technician"].client, "POST", "/api/v1/scripts/", {"name": "n", "language": text, "content": "x"})
    assert r.status_code == 400
    assert list(r.json()) == ["language"]
    r = send(world["psa"].client, "POST", "/api/v1/script-jobs/", {"script": text, "asset": text})
    assert r.status_code == 400
    assert set(r.json()) == {"script", "asset"}


def test_bodies_are_json_only(world):
    r = world["technician"].post(
        "/api/v1/scripts/", {"name": "f", "language": "sh", "content": "true\n"}, format="multipart"
    )
    assert r.status_code == 415
    assert is_error(r)
    assert not Script.objects.filter(name="f").exists()


# --- query strings and paths ------------------------------------------------------------------


@pytest.mark.parametrize("limit", [str(2**63), "9" * 400, str(2**31)])
def test_a_huge_limit_is_clamped_to_a_page_of_1000(world, limit):
    Site.objects.bulk_create(Site(name=f"s{n:04}") for n in range(1005))
    r = world["admin"].get("/api/v1/sites/", {"limit": limit})
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == 1006
    assert len(body["results"]) == 1000
    assert "limit=1000" in body["next"]
    for url in LISTS:
        r = world["admin"].get(url, {"limit": limit, "offset": limit})
        assert r.status_code == 200, (url, r.status_code)
        assert r.json()["results"] == []


@pytest.mark.parametrize("value", ["-1", "0", "abc", "1e3", "", "\x00"])
def test_a_limit_or_offset_that_is_not_a_positive_integer_gives_the_default_page(world, value):
    Site.objects.bulk_create(Site(name=f"s{n:03}") for n in range(150))
    for params in ({"limit": value}, {"offset": value}):
        r = world["admin"].get("/api/v1/sites/", params)
        assert r.status_code == 200, (params, r.status_code)
        assert len(r.json()["results"]) == 100
    for url in LISTS:
        assert world["psa"].get(url, {"limit": value, "offset": value}).status_code == 200, url


@pytest.mark.parametrize(
    ("url", "params"),
    [
        ("/api/v1/scripts/", {"name": "a\x00b"}),
        ("/api/v1/assets/", {"hostname": "a\x00b", "site": "\x00"}),
        ("/api/v1/evidence/", {"related_entity": "\x00", "related_id": "\x00"}),
        ("/api/v1/evidence/", {"asset": str(2**80), "psa_case": "not-a-uuid"}),
        ("/api/v1/script-jobs/", {"asset": "1" * 40, "script": "x", "psa_task": "\x00"}),
        ("/api/v1/kill-switches/", {"scope": "\x00"}),
        ("/api/v1/config-keys/", {"status": "maybe", "platform": "\x00"}),
    ],
)
def test_bad_filters_are_400_naming_them(world, url, params):
    r = world["psa"].get(url, params)
    assert r.status_code == 400, r.content
    assert is_error(r)
    assert set(r.json()) <= set(params)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/psa/cases/not-a-uuid/",
        "/api/v1/psa/tasks/1/",
        "/api/v1/psa/cases/%C2%84/evidence/",
        "/api/v1/evidence/%00/",
        "/api/v1/evidence/legal-holds/null,null/",
        "/api/v1/evidence/%ED%A0%80/content/",
        "/api/v1/no-such-thing/",
    ],
)
def test_a_path_that_matches_no_route_is_a_json_404(world, path):
    r = world["psa"].get(path)
    assert r.status_code == 404
    assert r["Content-Type"] == "application/json"
    assert r.json() == {"detail": "Not found."}


# --- the schema says so -----------------------------------------------------------------------


@pytest.fixture
def schema(world):
    r = world["psa"].get("/api/schema/", {"format": "json"})
    assert r.status_code == 200
    return json.loads(r.content)


def component(schema, name):
    return schema["components"]["schemas"][name]


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("Evidence", ["asset_id", "site", "psa_case_id", "psa_task_id", "history_sequence"]),
        ("LegalHold", ["site", "psa_case", "released_by", "released_at"]),
        ("KillSwitch", ["site", "asset", "released_by", "released_at"]),
        ("Script", ["decided_by", "decided_at"]),
        ("ScriptJob", ["decided_by", "decided_at", "started_at", "completed_at", "result"]),
        ("Asset", ["agent", "facts"]),
        ("EvidenceExport", ["download", "anchor_sequence", "started_at", "finished_at"]),
        ("PsaCase", ["expires_at"]),
        ("Agent", ["last_seen_at", "revoked_at"]),
    ],
)
def test_fields_that_can_be_null_are_nullable_and_every_field_of_an_answer_is_required(schema, name, fields):
    answer = component(schema, name)
    for field in fields:
        prop = answer["properties"][field]
        nullable = prop.get("nullable") or any(part.get("nullable") for part in prop.get("allOf", []))
        assert nullable, (name, field, prop)
    assert set(answer["required"]) == set(answer["properties"]), name


def test_requests_require_what_the_api_requires(schema):
    assert set(component(schema, "ScriptRequest")["required"]) == {"name", "language", "content"}
    assert set(component(schema, "PsaCaseRequest")["required"]) == {"title", "status", "site"}
    assert set(component(schema, "PsaTaskRequest")["required"]) == {"case", "title", "status"}
    for name in ("ReasonRequest", "PlaceHoldRequest", "ReleaseHoldRequest"):
        assert component(schema, name)["required"] == ["reason"], name
    assert "target" not in component(schema, "KillSwitch")["properties"]  # write-only


def test_the_jobs_list_says_whether_its_count_is_exact(schema):
    """``GET /api/v1/jobs/`` counts up to a limit: its page says whether ``count`` is every job."""
    jobs = schema["paths"]["/api/v1/jobs/"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    page = component(schema, jobs["$ref"].rsplit("/", 1)[-1])
    assert page["required"] == ["count", "count_exact", "next", "previous", "results"]
    assert page["properties"]["count_exact"]["type"] == "boolean"
    assert "at least" in page["properties"]["count"]["description"]
    sites = schema["paths"]["/api/v1/sites/"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert "count_exact" not in component(schema, sites["$ref"].rsplit("/", 1)[-1])["properties"]


# The one request that carries a file: a software package's upload (docs/deployment.md).
UPLOADS = {("post", "/api/v1/packages/")}


def test_every_operation_documents_its_errors_in_the_one_shape(schema):
    error = {"$ref": "#/components/schemas/Error"}
    assert component(schema, "Error")["properties"]["detail"]["type"] == "string"
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            codes = operation["responses"]
            expected = {"401", "429"}
            if method != "get":
                expected.add("403")
            if "{" in path:
                expected.add("404")
            if "requestBody" in operation:
                expected |= {"400", "415"}
                media = (
                    ["application/json", "multipart/form-data"] if (method, path) in UPLOADS else ["application/json"]
                )
                assert list(operation["requestBody"]["content"]) == media, (method, path)
            assert expected <= set(codes), (method, path, sorted(codes))
            for code in codes:
                if code >= "400":
                    assert codes[code]["content"]["application/json"]["schema"] == error, (method, path, code)
    assert "Retry-After" in schema["paths"]["/api/v1/sites/"]["get"]["responses"]["429"]["headers"]


def test_conflicts_and_media_types_are_documented(schema):
    paths = schema["paths"]
    for path in (
        "/api/v1/scripts/{id}/approve/",
        "/api/v1/scripts/{id}/reject/",
        "/api/v1/script-jobs/{id}/approve/",
        "/api/v1/script-jobs/{id}/reject/",
        "/api/v1/kill-switches/{id}/release/",
        "/api/v1/agents/{id}/revoke/",
        "/api/v1/evidence/legal-holds/{id}/release/",
    ):
        assert "409" in paths[path]["post"]["responses"], path
    content = paths["/api/v1/evidence/{id}/content/"]["get"]["responses"]["200"]
    assert set(content["content"]) == {"application/json", "application/octet-stream"}
    assert content["headers"]["X-Content-SHA256"]["required"] is True
    download = paths["/api/v1/evidence/exports/{id}/download/"]["get"]["responses"]
    assert set(download["200"]["content"]) == {"application/zip"}
    assert {"403", "409"} <= set(download)
    for kind in ("cases", "tasks"):
        assert {"200", "201"} <= set(paths[f"/api/v1/psa/{kind}/{{{kind[:-1]}_id}}/"]["put"]["responses"])


def test_the_schema_declares_the_bearer_token_that_the_api_takes(schema, world):
    scheme = schema["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for item in schema["paths"].values():
        for operation in item.values():
            assert {"bearerAuth": []} in operation["security"]
    r = APIClient().get("/api/v1/sites/", HTTP_AUTHORIZATION="Bearer rmm_nope_nope")
    assert r.status_code == 401
    assert r["WWW-Authenticate"] == "Bearer"


def test_the_schema_is_valid_openapi_and_generates_without_warnings(tmp_path):
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))
