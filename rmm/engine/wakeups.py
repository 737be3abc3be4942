"""Wake-ups for agents holding a heartbeat open (docs/agent.md, "The held heartbeat").

An idle agent's heartbeat waits on the server until there is something for it or its time is
up. This module is how the server tells such a heartbeat, in whichever process it waits, that
there may be work now. A wake-up is only a hint: a lost one costs the agent its wait, never work.

Why not a Channels group per agent, as the console uses for people: every held heartbeat would
then cost a channel, a group add and a group discard in Redis, about a thousand Redis operations a
second at 10,000 agents, all in the workers' event loops (docs/performance.md). Here a waiting
heartbeat is an entry in a dict, and each server process holds one Redis subscription through
which every wake-up reaches every process (one PUBLISH per batch of agents). Without Redis (the
embedded default) wake-ups reach the heartbeats held in the process that sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections.abc import Iterable

from django.conf import settings

logger = logging.getLogger(__name__)

CHANNEL = "rmm:agent-wake"
_BATCH = 1000  # agent ids per published message
_READY_WAIT = 2.0  # seconds a first waiter waits for its process's subscription


class Waiter:
    """One held heartbeat's ear: registered before the heartbeat looks for work, so a wake-up
    sent after that look, however soon, is not missed.

    Built on a plain future and a timer rather than ``asyncio.wait_for``: a held heartbeat that
    times out then leaves no cancelled task behind, whose exception and traceback would tie its
    request into a reference cycle that only a full collection frees (docs/performance.md)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.loop = asyncio.get_running_loop()
        self.woken = False  # a wake-up that came while nobody was waiting (during a look for work)
        self.future: asyncio.Future | None = None

    async def wait(self, seconds: float, gone: asyncio.Future | None = None) -> bool:
        """True when woken within ``seconds``; False when the time is up or the client has gone."""
        if self.woken:
            self.woken = False
            return True
        future = self.future = self.loop.create_future()
        timer = self.loop.call_later(max(0.0, seconds), _settle, future, False)
        if gone is not None:
            gone.add_done_callback(lambda _: _settle(future, False))
        try:
            return await future
        finally:
            timer.cancel()
            self.future = None

    def close(self) -> None:
        """Stop listening (idempotent)."""
        with _lock:
            group = _waiting.get(self.key)
            if group is not None:
                group.discard(self)
                if not group:
                    del _waiting[self.key]

    def set(self) -> None:
        with contextlib.suppress(RuntimeError):  # its loop has closed: nobody is waiting any more
            self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        if self.future is None:
            self.woken = True
        else:
            _settle(self.future, True)


def _settle(future: asyncio.Future, value: bool) -> None:
    if not future.done():
        future.set_result(value)


_lock = threading.Lock()
_waiting: dict[str, set[Waiter]] = {}
_listeners: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> (task, ready event)
_publisher = None


async def listen(agent_id) -> Waiter:
    """Register a waiter for this agent; the caller must :meth:`Waiter.close` it. (The held
    heartbeat's wait may end in the agent protocol's handler, outside the view that began it.)"""
    if settings.REDIS_URL:
        await _subscribed()
    waiter = Waiter(str(agent_id))
    with _lock:
        _waiting.setdefault(waiter.key, set()).add(waiter)
    return waiter


def wake_local(agent_ids: Iterable) -> None:
    """Wake the heartbeats these agents hold in this process."""
    with _lock:
        targets = [waiter for key in {str(pk) for pk in agent_ids} for waiter in _waiting.get(key, ())]
    for waiter in targets:
        waiter.set()


def wake(agent_ids: Iterable) -> None:
    """Wake these agents wherever their heartbeat is held. Never raises: a hint that cannot be
    sent is logged, and the agent finds its work when its held heartbeat ends."""
    keys = sorted({str(pk) for pk in agent_ids})
    if not keys:
        return
    if not settings.REDIS_URL:
        wake_local(keys)
        return
    try:
        client = _publishing_client()
        for start in range(0, len(keys), _BATCH):
            client.publish(CHANNEL, " ".join(keys[start : start + _BATCH]))
    except Exception:
        logger.warning("agent wake-up not sent: Redis error", exc_info=True)


def _publishing_client():
    global _publisher
    if _publisher is None:
        import redis

        _publisher = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    return _publisher


async def _subscribed() -> None:
    """Start this event loop's subscription once, and let the first waiters wait (briefly) until
    it is in place; if Redis is down they go on without it."""
    loop = asyncio.get_running_loop()
    entry = _listeners.get(loop)
    if entry is None:
        ready = asyncio.Event()
        entry = (loop.create_task(_listen(ready), name="agent-wake-listener"), ready)
        _listeners[loop] = entry
    ready = entry[1]
    if not ready.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), _READY_WAIT)


async def _listen(ready: asyncio.Event) -> None:
    """This process's one subscription: every published wake-up, to the heartbeats held here."""
    import redis.asyncio

    while True:
        client = redis.asyncio.Redis.from_url(settings.REDIS_URL, health_check_interval=30)
        try:
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(CHANNEL)
                async for message in pubsub.listen():
                    if message["type"] == "subscribe":
                        ready.set()
                    elif message["type"] == "message":
                        wake_local(message["data"].decode("ascii", "replace").split())
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("agent wake-up subscription lost; retrying in 1 s", exc_info=True)
        finally:
            ready.clear()
            with contextlib.suppress(Exception):
                await client.aclose()
        await asyncio.sleep(1)
