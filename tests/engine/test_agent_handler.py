"""The agent protocol's own ASGI handler (rmm/asgi.py), driven as an ASGI server drives it."""

import asyncio
import gc
import json
import logging
import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.db import connection

from rmm.engine import wakeups
from tests.helpers import agent_call, make_agent, until_held


@pytest.fixture
def agent(site, settings):
    settings.RMM_HEARTBEAT_INTERVAL = 30
    settings.RMM_HEARTBEAT_MIN_SPACING_SECONDS = 0
    return make_agent(site, "handled")


def test_a_held_heartbeat_whose_agent_left_stops_holding(agent):
    row, auth = agent
    started = time.monotonic()
    async_to_sync(agent_call)(auth, {"capacity": 4, "wait": 30}, leave_after=0.5)
    assert time.monotonic() - started < 5  # not the 30 s it asked for
    assert str(row.pk) not in wakeups._waiting


def test_a_held_heartbeat_keeps_no_request_alive(agent):
    """The handler holds it after the view has returned: the request and its body are let go
    (thousands are held at once; docs/performance.md, item 19)."""
    row, auth = agent

    async def scenario():
        call = asyncio.ensure_future(agent_call(auth, {"capacity": 4, "wait": 1}))
        await until_held(row.pk, call)
        gc.collect()
        # type(), not isinstance(): a dead weakref.proxy among the objects raises on isinstance
        alive = [o for o in gc.get_objects() if type(o) is ASGIRequest and o.headers.get("Authorization") == auth]
        sent = await call
        return alive, sent

    alive, sent = async_to_sync(scenario)()
    assert alive == []
    assert sent[0]["status"] == 200 and json.loads(sent[1]["body"])["instructions"] == []


def test_a_held_heartbeat_whose_look_for_work_fails_is_answered_500_and_logged(agent, caplog):
    row, auth = agent

    def break_the_database():
        with connection.cursor() as cursor:  # rolled back with the test's transaction
            cursor.execute("ALTER TABLE engine_killswitch RENAME TO engine_killswitch_gone")
        wakeups.wake([row.pk])

    async def scenario():
        call = asyncio.ensure_future(agent_call(auth, {"capacity": 4, "wait": 30}))
        await until_held(row.pk, call)
        await sync_to_async(break_the_database)()
        return await call

    with caplog.at_level(logging.ERROR, logger="django.request"):
        sent = async_to_sync(scenario)()
    headers = {key.lower(): value for key, value in sent[0]["headers"]}
    assert sent[0]["status"] == 500
    assert json.loads(sent[1]["body"]) == {"detail": "Server error."}
    assert int(headers[b"content-length"]) == len(sent[1]["body"])
    assert "a held heartbeat's look for work" in caplog.text
    assert str(row.pk) not in wakeups._waiting


def test_agent_calls_leave_no_cyclic_garbage(agent):
    """Nothing of a call, held or not, waits for the garbage collector: with thousands of held
    heartbeats, such garbage is what made full collections stop the workers for seconds."""
    _, auth = agent

    async def cyclic_garbage(body) -> list[str]:
        """Within one event loop, as in a worker: warm up, then count what only the collector frees."""
        for _ in range(3):
            await agent_call(auth, body)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(5):
                sent = await agent_call(auth, body)
                assert sent[0]["status"] == 200, sent
            gc.collect()
            return sorted({type(o).__name__ for o in gc.garbage})
        finally:
            gc.set_debug(0)
            gc.garbage.clear()

    for body in ({"capacity": 4}, {"capacity": 4, "wait": 1}):
        assert async_to_sync(cyclic_garbage)(body) == [], body
