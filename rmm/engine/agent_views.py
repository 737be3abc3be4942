"""The agent protocol: enroll, heartbeat (with lease), result, and the wake-up long-poll. See docs/agent.md.

Plain Django views rather than DRF: this is the hot path every agent calls forever, and
it needs a constant, small number of queries per call.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import math
import weakref
from concurrent.futures import Executor

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from rmm.engine import events, signing
from rmm.engine import services as engine
from rmm.errors import ServiceError
from rmm.history import services as history
from rmm.inventory import services as inventory

MAX_BODY = 8 * 1024 * 1024
logger = logging.getLogger(__name__)


def _body(request: HttpRequest) -> dict | None:
    if len(request.body) > MAX_BODY:
        return None
    try:
        data = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _bad_json() -> JsonResponse:
    return JsonResponse({"detail": "The body must be a JSON object."}, status=400)


def _unauthorized(request: HttpRequest) -> JsonResponse:
    header = request.headers.get("Authorization", "")
    if header.startswith("Agent "):
        agent_id = header[6:].partition(":")[0][:64]
        history.record_refusal(
            "anonymous",
            "agent.call",
            reason="unknown, revoked or wrong agent credential",
            payload={"agent_id": agent_id, "path": request.path},
        )
    response = JsonResponse({"detail": "Agent credential missing, wrong or revoked."}, status=401)
    response["WWW-Authenticate"] = "Agent"
    return response


# Set by the agent protocol's ASGI handler (rmm/asgi.py): a few long-lived threads for the sync
# part of every agent call. Unset (the test client, the rest of the site): Django's own threads.
sync_executor: contextvars.ContextVar[Executor | None] = contextvars.ContextVar("agent_sync_executor", default=None)


async def run_sync(func, *args):
    """Run the sync part of an agent call and give its database connection back before leaving
    the thread. The connection then spends no time idle across the event loop's hops, and no
    thread is started per request (docs/performance.md)."""
    executor = sync_executor.get()
    if executor is None:
        return await sync_to_async(func)(*args)
    return await sync_to_async(_closing(func), thread_sensitive=False, executor=executor)(*args)


def _closing(func):
    @functools.wraps(func)
    def call(*args):
        try:
            return func(*args)
        finally:
            connection.close()

    return call


@csrf_exempt
@require_POST
async def enroll(request: HttpRequest) -> JsonResponse:
    return await run_sync(_enroll, request)


def _enroll(request: HttpRequest) -> JsonResponse:
    data = _body(request)
    if data is None:
        return _bad_json()
    try:
        agent, secret = inventory.enroll_agent(str(data.get("token") or ""), data.get("facts") or {})
    except ServiceError as exc:
        return JsonResponse(exc.as_dict(), status=exc.status_code)
    return JsonResponse(
        {
            "agent_id": str(agent.pk),
            "asset_id": str(agent.asset_id),
            "secret": secret,
            "server_public_key": signing.public_key_b64(),
            "heartbeat_interval": settings.RMM_HEARTBEAT_INTERVAL,
        },
        status=201,
    )


@csrf_exempt
@require_POST
async def heartbeat(request: HttpRequest) -> JsonResponse:
    return await run_sync(_heartbeat, request)


def _heartbeat(request: HttpRequest) -> JsonResponse:
    agent = inventory.authenticate_agent(request.headers.get("Authorization", ""))
    if agent is None:
        return _unauthorized(request)
    data = _body(request)
    if data is None:
        return _bad_json()
    now = timezone.now()
    spacing = settings.RMM_HEARTBEAT_MIN_SPACING_SECONDS
    if agent.last_seen_at and (now - agent.last_seen_at).total_seconds() < spacing:
        history.record_refusal(
            agent, "heartbeat", reason="heartbeat faster than the server allows", site_id=agent.asset.site_id
        )
        response = JsonResponse(
            {"detail": "Too many heartbeats; slow down.", "interval": settings.RMM_HEARTBEAT_INTERVAL}, status=429
        )
        response["Retry-After"] = str(max(1, math.ceil(spacing)))
        return response
    seen = engine.check_in(agent, now, str(data.get("agent_version") or "")[:50])
    facts_required = False
    facts = data.get("facts")
    try:
        if isinstance(facts, dict):
            inventory.record_facts(agent, facts, now)
        elif data.get("facts_hash"):
            facts_required = seen.facts_hash != data["facts_hash"]
    except ServiceError as exc:
        return JsonResponse(exc.as_dict(), status=exc.status_code)
    running = data.get("running") if isinstance(data.get("running"), list) else []
    try:
        capacity = int(data.get("capacity", 1))
    except (TypeError, ValueError):
        capacity = 1
    leased = engine.lease(agent, capacity, now, seen.switch) if seen.work_waiting else []
    answer = {
        "interval": settings.RMM_HEARTBEAT_INTERVAL,
        "instructions": [engine.envelope(inst) for inst in leased],
        "abort": engine.to_abort(agent, running, seen.switch),
        "facts_required": facts_required,
    }
    new_secret = inventory.issue_rotated_secret(agent)
    if new_secret:
        answer["new_secret"] = new_secret
    return JsonResponse(answer)


@csrf_exempt
@require_POST
async def result(request: HttpRequest) -> JsonResponse:
    return await run_sync(_result, request)


def _result(request: HttpRequest) -> JsonResponse:
    agent = inventory.authenticate_agent(request.headers.get("Authorization", ""))
    if agent is None:
        return _unauthorized(request)
    data = _body(request)
    if data is None:
        return _bad_json()
    status, answer = engine.ingest_result(agent, data)
    return JsonResponse(answer, status=status)


def _authenticate_briefly(header: str):
    """Authenticate, then give the database connection back: a long-poll must not hold one."""
    try:
        return inventory.authenticate_agent(header)
    finally:
        if not connection.in_atomic_block:  # a test's transaction, never a request's
            connection.close()


def _wait_seconds(value) -> float:
    """The agent asks how long to wait; at most one heartbeat interval, at least 1 s."""
    longest = max(1.0, float(settings.RMM_HEARTBEAT_INTERVAL))
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return longest
    return min(longest, max(1.0, float(value)))


# Redis operations of waiting agents in flight at once, per process and event loop: under the
# client's connection pool (100), so a burst of thousands of long-polls queues instead of failing.
_LAYER_OPS = 50
_layer_ops: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _layer_slot() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    if loop not in _layer_ops:
        _layer_ops[loop] = asyncio.Semaphore(_LAYER_OPS)
    return _layer_ops[loop]


@csrf_exempt
@require_POST
async def wait(request: HttpRequest) -> JsonResponse:
    """Long-poll between heartbeats: ``{"wake": true}`` as soon as the server has something for
    this agent, ``{"wake": false}`` after ``timeout`` seconds. Async: while it waits it holds no
    thread and no database connection, only a subscription to the agent's Channels group."""
    agent = await run_sync(_authenticate_briefly, request.headers.get("Authorization", ""))
    if agent is None:
        return await run_sync(_unauthorized, request)
    data = _body(request)
    if data is None:
        return _bad_json()
    return JsonResponse(
        {"wake": await _wait_for_wake(events.agent_group(agent.pk), _wait_seconds(data.get("timeout")))}
    )


async def _wait_for_wake(group: str, seconds: float) -> bool:
    """Subscribe, wait, unsubscribe. A wake-up is a hint: without a channel layer, or should it
    fail, the agent waits out its time and finds its work at its next heartbeat."""
    deadline = asyncio.get_running_loop().time() + seconds
    layer = get_channel_layer()
    try:
        if layer is None:
            raise RuntimeError("no channel layer is configured")
        channel = await layer.new_channel()
        async with _layer_slot():
            await layer.group_add(group, channel)
        try:
            await asyncio.wait_for(layer.receive(channel), seconds)
            return True
        except TimeoutError:
            return False
        finally:
            async with _layer_slot():
                await layer.group_discard(group, channel)
    except Exception:  # the layer, e.g. Redis, failed: not this agent's problem
        logger.warning("agent wake-up unavailable: channel layer error", exc_info=True)
        await asyncio.sleep(max(0.0, deadline - asyncio.get_running_loop().time()))
        return False
