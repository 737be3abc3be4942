"""The held heartbeat: an idle agent's heartbeat with ``wait`` is answered as soon as the server has
something for it (new work, an abort), and otherwise after its wait. Through Redis when
REDIS_URL is set (each process's one subscription), in process otherwise."""

import asyncio
import json
import logging
import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.test import AsyncClient, Client

from rmm.engine import wakeups
from rmm.engine.services import kill_switches
from rmm.inventory import services as inventory
from scripting import services as scripting
from tests.helpers import agent_call, approved_authority, approved_script, make_agent, until_held

HEARTBEAT = "/api/v1/agent/heartbeat/"


@pytest.fixture
def agent(site, settings):
    settings.RMM_HEARTBEAT_INTERVAL = 30
    settings.RMM_HEARTBEAT_MIN_SPACING_SECONDS = 0  # these tests call back to back on purpose
    return make_agent(site, "waiter")


@pytest.fixture
def job_for(caller, site):
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    task = approved_authority(site, psa.user)
    script = approved_script(tech.user, boss.user)

    def queue(agent):
        return scripting.create_script_job(psa.user, script_id=script.pk, asset_id=agent.asset_id, psa_task_id=task.pk)

    return queue


def beat(auth, body):
    r = Client().post(HEARTBEAT, data=json.dumps(body), content_type="application/json", HTTP_AUTHORIZATION=auth)
    return r


class Answer:
    """A heartbeat's answer, however it was called."""

    def __init__(self, status_code: int, body: bytes, headers: dict) -> None:
        self.status_code, self.body, self.headers = status_code, body, headers

    def json(self) -> dict:
        return json.loads(self.body)


async def _through_django(auth: str, body: dict) -> Answer:
    r = await AsyncClient().post(HEARTBEAT, data=body, content_type="application/json", AUTHORIZATION=auth)
    return Answer(r.status_code, r.content, dict(r.headers))


async def _through_agent_handler(auth: str, body: dict) -> Answer:
    sent = await agent_call(auth, body)
    headers = {k.decode().lower(): v.decode() for k, v in sent[0]["headers"]}
    return Answer(sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]), headers)


AGENT_HANDLER = "the agent protocol's handler"


@pytest.fixture(params=["Django's handler", AGENT_HANDLER])
def held(request):
    """Send a held heartbeat; once the server holds it, run ``while_held`` (sync, with the
    database); returns the answer and how long it was held after ``while_held`` ran. Through
    Django's ASGI handler (the view holds it) and through the agent protocol's own handler
    (which holds it after the view has returned: rmm/asgi.py)."""
    send = _through_django if request.param == "Django's handler" else _through_agent_handler

    def hold(agent_row, auth, body, while_held):
        async def scenario():
            waiting = asyncio.ensure_future(send(auth, body))
            await until_held(agent_row.pk, waiting)
            await sync_to_async(while_held)()
            started = time.monotonic()
            response = await waiting
            return response, time.monotonic() - started

        answer = async_to_sync(scenario)()
        assert str(agent_row.pk) not in wakeups._waiting  # its ear closed with the answer
        return answer

    hold.via = request.param
    return hold


def test_without_anything_to_say_the_heartbeat_is_answered_after_its_wait(agent, settings):
    settings.RMM_HEARTBEAT_INTERVAL = 1  # the longest a heartbeat is held
    _, auth = agent
    started = time.monotonic()
    r = beat(auth, {"capacity": 4, "wait": 30})
    assert r.status_code == 200
    assert (r.json()["instructions"], r.json()["abort"]) == ([], [])
    assert 0.9 <= time.monotonic() - started < 5


def test_without_wait_the_heartbeat_is_answered_at_once(agent):
    _, auth = agent
    started = time.monotonic()
    for wait in (None, 0, -5, "30", True, float("nan")):
        body = {"capacity": 4} if wait is None else {"capacity": 4, "wait": wait}
        r = Client().post(
            HEARTBEAT, data=json.dumps(body, allow_nan=True), content_type="application/json", HTTP_AUTHORIZATION=auth
        )
        assert r.status_code == 200, (wait, r.content)
    assert time.monotonic() - started < 3


def test_new_work_ends_the_hold_with_the_instruction(agent, job_for, held):
    row, auth = agent

    def new_job():
        job_for(row)
        wakeups.wake([row.pk])  # what the commit of the job does (tests run inside a transaction)

    response, took = held(row, auth, {"capacity": 4, "wait": 30}, new_job)
    assert response.status_code == 200
    assert len(response.json()["instructions"]) == 1
    assert took < 5
    if held.via == AGENT_HANDLER:  # written into the held response: the middleware's headers kept
        assert int(response.headers["content-length"]) == len(response.body)
        assert response.headers["x-content-type-options"] == "nosniff"


def test_an_abort_ends_the_hold_of_an_agent_with_running_work(agent, job_for, caller, held):
    row, auth = agent
    job_for(row)
    first = beat(auth, {"capacity": 4}).json()["instructions"]
    running = [json.loads(first[0]["payload"])["instruction_id"]]
    boss = caller("boss2", "admin")

    def engage():
        kill_switches.engage(boss.user, scope="asset", target=str(row.asset_id), reason="stop it")
        wakeups.wake([row.pk])

    response, took = held(row, auth, {"capacity": 3, "running": running, "wait": 30}, engage)
    assert response.json()["abort"] == running
    assert took < 5


def test_a_wake_up_with_nothing_new_keeps_the_heartbeat_held(agent, settings, held):
    """A wake-up is a hint: the server looks again and, finding nothing, goes on waiting."""
    settings.RMM_HEARTBEAT_INTERVAL = 2
    row, auth = agent
    response, took = held(row, auth, {"capacity": 4, "wait": 2}, lambda: wakeups.wake([row.pk, "someone-else"]))
    assert response.status_code == 200 and response.json()["instructions"] == []
    assert took >= 1.0  # the rest of its two seconds


def test_an_agent_revoked_while_held_is_handed_no_work(agent, job_for, caller, settings, held):
    settings.RMM_HEARTBEAT_INTERVAL = 2
    row, auth = agent
    root = caller("root", "admin")

    def queue_then_revoke():
        job_for(row)
        inventory.revoke_agent(root.user, row, "laptop stolen")
        wakeups.wake([row.pk])

    response, _ = held(row, auth, {"capacity": 4, "wait": 2}, queue_then_revoke)
    assert response.json()["instructions"] == []
    assert beat(auth, {"capacity": 4}).status_code == 401  # and its next call is refused


def test_an_unknown_agent_is_refused_at_once_not_held(db):
    started = time.monotonic()
    r = beat("Agent 00000000-0000-0000-0000-000000000000:nope", {"wait": 30})
    assert r.status_code == 401
    assert r["WWW-Authenticate"] == "Agent"
    assert time.monotonic() - started < 3
    assert wakeups._waiting == {}


def test_a_wake_up_that_cannot_be_sent_is_logged_never_raised(settings, caplog):
    settings.REDIS_URL = "redis://127.0.0.1:9/0"  # nothing listens there
    wakeups._publisher = None
    try:
        with caplog.at_level(logging.WARNING, logger="rmm.engine.wakeups"):
            wakeups.wake(["some-agent"])
    finally:
        wakeups._publisher = None
    assert "agent wake-up not sent" in caplog.text


WOKEN_BY = ["new work", "a rotation", "a kill switch", "a revocation"]


@pytest.mark.parametrize("what", WOKEN_BY)
def test_what_a_service_commits_ends_the_hold_with_its_answer(
    agent, job_for, caller, held, what, django_capture_on_commit_callbacks
):
    """No wake-up sent by hand: the service's own, sent as its transaction commits, ends the hold,
    and the held heartbeat answers with what the agent must now know: its new instruction, its new
    secret, or the running instruction to kill (under a switch; its agent revoked)."""
    row, auth = agent
    root = caller("root", "admin")
    running = []
    if what in ("a kill switch", "a revocation"):
        job_for(row)
        first = beat(auth, {"capacity": 4}).json()["instructions"]
        running = [json.loads(first[0]["payload"])["instruction_id"]]

    def act():
        with django_capture_on_commit_callbacks(execute=True):  # as the commit would (tests run in a transaction)
            if what == "new work":
                job_for(row)
            elif what == "a rotation":
                inventory.request_rotation(root.user, row)
            elif what == "a kill switch":
                kill_switches.engage(root.user, scope="asset", target=str(row.asset_id), reason="stop it")
            else:
                inventory.revoke_agent(root.user, row, "laptop stolen")

    response, took = held(row, auth, {"capacity": 3, "running": running, "wait": 30}, act)
    assert response.status_code == 200 and took < 5
    body = response.json()
    if what == "new work":
        [envelope] = body["instructions"]
        assert json.loads(envelope["payload"])["agent_id"] == str(row.pk)
    elif what == "a rotation":
        assert body["instructions"] == [] and body["abort"] == []
        assert beat(f"Agent {row.pk}:{body['new_secret']}", {"capacity": 4}).status_code == 200  # it works
    else:
        assert body["instructions"] == [] and body["abort"] == running
