"""The agent protocol's own ASGI handler (rmm/asgi.py), driven as an ASGI server drives it."""

import asyncio
import gc
import json
import time

import pytest
from asgiref.sync import async_to_sync

from rmm.engine import wakeups
from tests.helpers import make_agent


def scope(auth: str, body: bytes) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/agent/heartbeat/",
        "raw_path": b"/api/v1/agent/heartbeat/",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"authorization", auth.encode()),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }


async def call(auth: str, body: dict, leave_after: float | None = None) -> list[dict]:
    """One request through the agent handler (its sync parts in this test's thread, which holds
    the test's transaction); the client disconnects after ``leave_after`` seconds, or once answered."""
    from rmm.asgi import agent_asgi_app

    raw = json.dumps(body).encode()
    sent, answered, first = [], asyncio.Event(), [True]

    async def receive():
        if first[0]:
            first[0] = False
            return {"type": "http.request", "body": raw, "more_body": False}
        if leave_after is None:
            await answered.wait()
        else:
            await asyncio.sleep(leave_after)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            answered.set()

    await agent_asgi_app.handle(scope(auth, raw), receive, send)
    return sent


@pytest.fixture
def agent(site, settings):
    settings.RMM_HEARTBEAT_INTERVAL = 30
    settings.RMM_HEARTBEAT_MIN_SPACING_SECONDS = 0
    return make_agent(site, "handled")


def test_a_held_heartbeat_whose_agent_left_stops_holding(agent):
    row, auth = agent
    started = time.monotonic()
    async_to_sync(call)(auth, {"capacity": 4, "wait": 30}, leave_after=0.5)
    assert time.monotonic() - started < 5  # not the 30 s it asked for
    assert str(row.pk) not in wakeups._waiting


def test_agent_calls_leave_no_cyclic_garbage(agent):
    """Nothing of a call, held or not, waits for the garbage collector: with thousands of held
    heartbeats, such garbage is what made full collections stop the workers for seconds."""
    _, auth = agent

    async def cyclic_garbage(body) -> list[str]:
        """Within one event loop, as in a worker: warm up, then count what only the collector frees."""
        for _ in range(3):
            await call(auth, body)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(5):
                sent = await call(auth, body)
                assert sent[0]["status"] == 200, sent
            gc.collect()
            return sorted({type(o).__name__ for o in gc.garbage})
        finally:
            gc.set_debug(0)
            gc.garbage.clear()

    for body in ({"capacity": 4}, {"capacity": 4, "wait": 1}):
        assert async_to_sync(cyclic_garbage)(body) == [], body
