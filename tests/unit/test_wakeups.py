"""The wake-up long-poll: an agent waiting in POST /api/v1/agent/wait/ is told at once when the
server has something for it, and otherwise after its timeout."""

import asyncio
import json
import time

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.test import AsyncClient, Client

from rmm.engine import events
from rmm.inventory import services as inventory
from scripting import services as scripting
from tests.helpers import approved_authority, approved_script, make_agent


@pytest.fixture
def agent(site, settings):
    settings.RMM_HEARTBEAT_INTERVAL = 1  # the longest a wait lasts
    return make_agent(site, "waiter")


def wait(auth, body=None):
    return Client().post(
        "/api/v1/agent/wait/", data=json.dumps(body or {}), content_type="application/json", HTTP_AUTHORIZATION=auth
    )


def test_without_work_the_wait_ends_after_its_timeout(agent):
    _, auth = agent
    started = time.monotonic()
    r = wait(auth, {"timeout": 30})  # capped at the heartbeat interval
    assert r.status_code == 200
    assert r.json() == {"wake": False}
    assert 0.9 <= time.monotonic() - started < 5


def test_a_message_to_the_agents_group_wakes_it_at_once(agent, settings):
    settings.RMM_HEARTBEAT_INTERVAL = 30
    row, auth = agent

    async def scenario():
        layer = get_channel_layer()
        waiting = asyncio.ensure_future(
            AsyncClient().post(
                "/api/v1/agent/wait/", data={"timeout": 30}, content_type="application/json", AUTHORIZATION=auth
            )
        )
        started = time.monotonic()
        while not waiting.done() and time.monotonic() - started < 10:
            await layer.group_send(events.agent_group(row.pk), events.WAKE)
            await asyncio.sleep(0.05)
        return await waiting, time.monotonic() - started

    response, took = async_to_sync(scenario)()
    assert response.status_code == 200
    assert response.json() == {"wake": True}
    assert took < 5


def test_an_unknown_agent_may_not_wait(db):
    r = wait("Agent 00000000-0000-0000-0000-000000000000:nope")
    assert r.status_code == 401
    assert r["WWW-Authenticate"] == "Agent"


def test_new_work_rotation_and_aborts_wake_the_agent(
    caller, site, agent, monkeypatch, django_capture_on_commit_callbacks
):
    row, _ = agent
    woken = []
    monkeypatch.setattr(events, "wake_agents", lambda ids: woken.append(sorted(str(pk) for pk in ids)))
    psa, tech, boss, root = (
        caller("psa", "psa"),
        caller("tech", "technician"),
        caller("boss", "approver"),
        caller("root", "admin"),
    )
    task = approved_authority(site, psa.user)
    script = approved_script(tech.user, boss.user)
    scripting.create_script_job(psa.user, script_id=script.pk, asset_id=row.asset_id, psa_task_id=task.pk)
    assert woken == [[str(row.pk)]]  # queued work
    inventory.request_rotation(root.user, row)
    assert woken[-1] == [str(row.pk)]  # its next heartbeat brings the new secret


def test_the_wait_holds_no_database_connection(agent, django_assert_max_num_queries):
    _, auth = agent
    with django_assert_max_num_queries(1):  # the agent's authentication, and nothing while it waits
        assert wait(auth).status_code == 200
