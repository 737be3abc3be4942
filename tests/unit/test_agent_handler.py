"""The agent protocol's own ASGI handler (rmm/asgi.py), driven as an ASGI server drives it."""

import gc
import time

import pytest
from asgiref.sync import async_to_sync

from rmm.engine import wakeups
from tests.helpers import agent_call, make_agent


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
