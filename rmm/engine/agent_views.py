"""The agent protocol: enroll, heartbeat (with lease), result, and the wake-up long-poll. See docs/agent.md.

Plain Django views rather than DRF: this is the hot path every agent calls forever, and
it needs a constant, small number of queries per call.
"""

from __future__ import annotations

import asyncio
import json
import math

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
from rmm.engine.services import kill_switches
from rmm.errors import ServiceError
from rmm.history import services as history
from rmm.inventory import services as inventory
from rmm.inventory.models import AssetFacts

MAX_BODY = 8 * 1024 * 1024


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


@csrf_exempt
@require_POST
def enroll(request: HttpRequest) -> JsonResponse:
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
def heartbeat(request: HttpRequest) -> JsonResponse:
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
    version = str(data.get("agent_version") or "")[:50]
    type(agent).objects.filter(pk=agent.pk).update(last_seen_at=now, version=version)
    facts_required = False
    facts = data.get("facts")
    try:
        if isinstance(facts, dict):
            inventory.record_facts(agent, facts, now)
        elif data.get("facts_hash"):
            stored = AssetFacts.objects.filter(asset_id=agent.asset_id).values_list("facts_hash", flat=True).first()
            facts_required = stored != data["facts_hash"]
    except ServiceError as exc:
        return JsonResponse(exc.as_dict(), status=exc.status_code)
    running = data.get("running") if isinstance(data.get("running"), list) else []
    try:
        capacity = int(data.get("capacity", 1))
    except (TypeError, ValueError):
        capacity = 1
    switch = kill_switches.active_for(agent.asset.site_id, agent.asset_id)
    leased = engine.lease(agent, capacity, now, switch)
    answer = {
        "interval": settings.RMM_HEARTBEAT_INTERVAL,
        "instructions": [engine.envelope(inst) for inst in leased],
        "abort": engine.to_abort(agent, running, switch),
        "facts_required": facts_required,
    }
    new_secret = inventory.issue_rotated_secret(agent)
    if new_secret:
        answer["new_secret"] = new_secret
    return JsonResponse(answer)


@csrf_exempt
@require_POST
def result(request: HttpRequest) -> JsonResponse:
    agent = inventory.authenticate_agent(request.headers.get("Authorization", ""))
    if agent is None:
        return _unauthorized(request)
    data = _body(request)
    if data is None:
        return _bad_json()
    status, answer = engine.ingest_result(agent, data)
    return JsonResponse(answer, status=status)


def _authenticate_then_release(header: str):
    """Authenticate, then give the database connection back: a long-poll must not hold one."""
    try:
        return inventory.authenticate_agent(header)
    finally:
        if not connection.in_atomic_block:
            connection.close()


def _wait_seconds(value) -> float:
    """The agent asks how long to wait; at most one heartbeat interval, at least 1 s."""
    longest = max(1.0, float(settings.RMM_HEARTBEAT_INTERVAL))
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return longest
    return min(longest, max(1.0, float(value)))


@csrf_exempt
@require_POST
async def wait(request: HttpRequest) -> JsonResponse:
    """Long-poll between heartbeats: ``{"wake": true}`` as soon as the server has something for
    this agent, ``{"wake": false}`` after ``timeout`` seconds. Async: while it waits it holds no
    thread and no database connection, only a subscription to the agent's Channels group."""
    agent = await sync_to_async(_authenticate_then_release)(request.headers.get("Authorization", ""))
    if agent is None:
        return await sync_to_async(_unauthorized)(request)
    data = _body(request)
    if data is None:
        return _bad_json()
    seconds = _wait_seconds(data.get("timeout"))
    layer = get_channel_layer()
    if layer is None:  # no channel layer configured: nothing can wake it
        await asyncio.sleep(seconds)
        return JsonResponse({"wake": False})
    channel = await layer.new_channel()
    group = events.agent_group(agent.pk)
    await layer.group_add(group, channel)
    try:
        await asyncio.wait_for(layer.receive(channel), seconds)
        woke = True
    except TimeoutError:
        woke = False
    finally:
        await layer.group_discard(group, channel)
    return JsonResponse({"wake": woke})
