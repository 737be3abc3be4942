"""Health probes, and what the server answers while a dependency is down: 503 with a JSON reason
and Retry-After, never a 500, with the dependency named in the log. The real outages (PostgreSQL
stopped, Redis stopped, a store that refuses writes, processes killed) are in tests/faults/."""

import json
import logging
import socket
import time
from pathlib import Path
from unittest.mock import ANY

import psycopg
import pytest
from django.test import Client

from evidence.models import RmmEvidence
from rmm.core import dependencies
from rmm.engine.models import Instruction
from rmm.keys import keyset
from tests.helpers import heartbeat, publish, report
from tests.scripting.test_script_flow import setup  # noqa: F401 - a fixture


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def api_rate(settings):
    """Set the API rate limit for this test (DRF reads it once per class), and put it back."""
    from rest_framework.settings import api_settings
    from rest_framework.throttling import SimpleRateThrottle

    def set_rate(rate: str) -> None:
        settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"token": rate}}
        api_settings.reload()
        SimpleRateThrottle.THROTTLE_RATES = api_settings.DEFAULT_THROTTLE_RATES

    yield set_rate
    set_rate("600/min")


@pytest.fixture(autouse=True)
def _first_keys(request):
    """The first signing keys exist before a probe looks (a server makes them on first use; the
    probe runs in a thread of its own, which the test database's open transaction would block)."""
    if {"db", "caller", "setup"} & set(request.fixturenames):
        request.getfixturevalue("db")
        keyset.reload()


def readyz(client=None):
    response = (client or Client()).get("/readyz")
    return response, response.json()


# --- the probes -----------------------------------------------------------------------------


def test_healthz_answers_without_authentication_a_session_or_a_second_factor(caller, api_rate):
    api_rate("1/min")
    boss = caller("boss", "approver")  # signed in without a second factor: the console sends them to set one up
    session = Client()
    session.force_login(boss.user)
    assert session.get("/console/").status_code == 302
    for client in (Client(), session, Client()):
        response = client.get("/healthz")
        assert (response.status_code, response.json()) == (200, {"status": "alive"})
        assert response["Cache-Control"] == "no-store"
    assert Client().post("/healthz").status_code == 405


def test_readyz_lists_each_dependency_and_answers_200_when_all_are_up(db, settings):
    response, body = readyz()
    assert response.status_code == 200
    expected = {"database", "evidence_storage", "signing_key"} | ({"redis"} if settings.REDIS_URL else set())
    assert body["status"] == "ready" and set(body["dependencies"]) == expected
    assert {state["status"] for state in body["dependencies"].values()} == {"up"}


def test_readyz_answers_503_naming_a_store_that_is_down_and_200_once_it_is_back(db, evidence_store):
    evidence_store.refuse()
    response, body = readyz()
    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert body["status"] == "not ready"
    storage = body["dependencies"]["evidence_storage"]
    assert (storage["status"], storage["reason"]) == ("down", "NotADirectoryError")  # the log has the path
    assert body["dependencies"]["database"]["status"] == "up"
    evidence_store.restore()
    assert readyz()[0].status_code == 200


# --- 503, never 500 ---------------------------------------------------------------------------


def test_a_result_the_store_cannot_keep_is_answered_503_and_accepted_once_it_is_back(
    setup,  # noqa: F811
    evidence_store,
    caplog,
):
    psa, tech, approver, agent, auth, task = setup
    script = publish(tech, approver)
    r = psa.post(
        "/api/v1/script-jobs/", {"script": script["id"], "asset": str(agent.asset_id), "psa_task_id": str(task.pk)}
    )
    assert r.status_code == 201, r.content
    instruction_id = json.loads(heartbeat(auth)["instructions"][0]["payload"])["instruction_id"]

    evidence_store.refuse()
    with caplog.at_level(logging.WARNING, logger="rmm.core.dependencies"):
        refused = report(auth, instruction_id)
    assert refused.status_code == 503 and refused["Retry-After"] == "5"
    assert refused.json() == {
        "detail": "Service unavailable: the evidence_storage cannot be used now; retry later.",
        "dependency": "evidence_storage",
    }
    assert "POST /api/v1/agent/results/ answered 503: evidence_storage unavailable: writing evidence/" in caplog.text
    assert Instruction.objects.get(pk=instruction_id).status == "running"  # nothing half-written
    assert not RmmEvidence.objects.filter(related_id=r.json()["id"]).exists()

    evidence_store.restore()
    accepted = report(auth, instruction_id)
    assert accepted.status_code == 201, accepted.content
    assert RmmEvidence.objects.filter(related_id=r.json()["id"]).count() == 1
    assert "evidence_storage available again after" in caplog.text


@pytest.fixture
def unusable_signing_key(settings):
    """The instruction key is registered, but its private half is gone from this server."""
    keyset.reload()  # the first keys, generated into this test's key directory
    for path in Path(settings.RMM_SIGNING_KEY_DIR).glob("*.pem"):
        path.unlink()
    keyset.reload()
    yield
    keyset.reload()


def test_work_that_must_be_signed_is_answered_503_while_the_signing_key_cannot_be_loaded(
    setup,  # noqa: F811
    unusable_signing_key,
):
    psa, tech, approver, agent, _auth, task = setup
    script = publish(tech, approver)
    r = psa.post(
        "/api/v1/script-jobs/", {"script": script["id"], "asset": str(agent.asset_id), "psa_task_id": str(task.pk)}
    )
    assert r.status_code == 503 and r["Retry-After"] == "5"
    assert r.json()["dependency"] == "signing_key"
    assert Instruction.objects.count() == 0
    response, body = readyz()
    assert response.status_code == 503
    key = body["dependencies"]["signing_key"]
    assert (key["status"], key["reason"]) == ("down", "KeyUnavailable")


def test_with_redis_unreachable_the_api_keeps_answering_and_counts_its_rate_limit_in_the_process(
    caller, settings, api_rate, caplog
):
    dead = f"redis://127.0.0.1:{closed_port()}/0"
    settings.REDIS_URL = dead
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": dead,
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
    api_rate("2/min")
    tech = caller("tech", "technician")
    with caplog.at_level(logging.WARNING, logger="rmm.core.dependencies"):
        statuses = [tech.get("/api/v1/sites/").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]  # still limited, counted here
    assert "redis unavailable: ConnectionError" in caplog.text
    response, body = readyz()
    assert response.status_code == 503
    assert body["dependencies"]["redis"] == {"status": "down", "reason": "ConnectionRefusedError", "ms": ANY}


def test_while_the_database_is_down_requests_are_answered_at_once_and_one_a_second_tries_it(caller):
    tech = caller("tech", "technician")
    dependencies.mark_down(dependencies.DATABASE, "OperationalError: connection refused")
    started = time.monotonic()
    r = tech.get("/api/v1/sites/")
    assert r.status_code == 503 and r.json()["dependency"] == "database" and r["Retry-After"] == "5"
    assert Client().get("/healthz").status_code == 200  # the probes are never held back
    time.sleep(max(0.0, started + dependencies.PROBE_SECONDS - time.monotonic()) + 0.05)
    assert tech.get("/api/v1/sites/").status_code == 200  # it tries, and the database answers


# --- what counts as a dependency being down ----------------------------------------------------


def test_a_refused_connection_is_a_database_outage_and_a_bad_statement_is_not(db):
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(host="127.0.0.1", port=closed_port(), user="postgres", connect_timeout=2)
    dependency, _reason, outage = dependencies.classify(refused.value)
    assert (dependency, outage) == ("database", True)
    from django.db import connection

    with pytest.raises(Exception) as bad, connection.cursor() as cursor:
        cursor.execute("SELECT * FROM no_such_table")
    assert dependencies.classify(bad.value) is None
