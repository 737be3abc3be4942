"""Health probes for the proxy and orchestrators: ``GET /healthz`` (liveness) and ``GET /readyz``
(readiness, each dependency's state). No authentication, no session, no rate limit: the ASGI
application sends them to the lean handler the agent protocol uses (rmm/asgi.py).
docs/operations.md.
"""

from __future__ import annotations

import contextlib
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from rmm.core import dependencies as deps

REDIS_TIMEOUT = 2.0
PROBE_NAME = "readiness/probe"
_redis: dict = {}  # one client per URL


def _no_store(response: JsonResponse) -> JsonResponse:
    response["Cache-Control"] = "no-store"
    return response


@require_GET
async def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: 200 while the process serves. It touches no dependency."""
    return _no_store(JsonResponse({"status": "alive"}))


@require_GET
async def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: 200 when every dependency is up, else 503 with Retry-After."""
    states = await sync_to_async(readiness, thread_sensitive=False)()
    ready = all(state["status"] == "up" for state in states.values())
    response = JsonResponse(
        {"status": "ready" if ready else "not ready", "dependencies": states}, status=200 if ready else 503
    )
    if not ready:
        response["Retry-After"] = str(settings.RMM_UNAVAILABLE_RETRY_AFTER)
    return _no_store(response)


def readiness() -> dict[str, dict]:
    """Each dependency's state, checked now: ``{"status": "up"}`` or ``{"status": "down", "reason": ...}``.

    The reason is the kind of error only (``PoolTimeout``, ``PermissionError`` …): the probe is
    unauthenticated, and hosts, paths and messages are for the log, which has them in full."""
    checks = {deps.DATABASE: _database}
    if settings.REDIS_URL:
        checks[deps.REDIS] = _redis_ping
    checks[deps.EVIDENCE_STORAGE] = _evidence_storage
    checks[deps.SIGNING_KEY] = _signing_key
    states = {}
    for name, check in checks.items():
        started = time.monotonic()
        try:
            reason = check()
        except Exception as exc:  # noqa: BLE001 - whatever failed is the reason it is down
            if deps.noted(exc) is None:
                deps.mark_down(name, deps.short(exc))
            reason = deps.kind(exc)
        states[name] = {"status": "up"} if reason is None else {"status": "down", "reason": reason}
        states[name]["ms"] = round((time.monotonic() - started) * 1000, 1)
    return states


def _database() -> str | None:
    """``SELECT 1``, unless the database is known down and it is not time to try it again."""
    if deps.database_gate() is not None:
        return "down (tried again once a second)"
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        connection.close()  # this thread is not a request's: give the connection back now
    return None


def _redis_ping() -> str | None:
    client = _redis.get(settings.REDIS_URL)
    if client is None:
        import redis

        client = _redis[settings.REDIS_URL] = redis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
        )
    client.ping()
    deps.mark_up(deps.REDIS)
    return None


def _evidence_storage() -> str | None:
    """The store answers a listing (an empty one is fine); after a write it refused, a small write
    must succeed again."""
    with contextlib.suppress(FileNotFoundError):  # nothing stored yet: the first write makes the folder
        default_storage.listdir("")
    if deps.down_reason(deps.EVIDENCE_STORAGE) is None:
        return None
    name = default_storage.save(PROBE_NAME, ContentFile(b"readiness probe\n"))
    default_storage.delete(name)
    deps.mark_up(deps.EVIDENCE_STORAGE)
    return None


def _signing_key() -> str | None:
    """Each purpose has a key this process can sign with (KeyUnavailable, or KeyFileProblem for a
    key file that cannot be used, otherwise)."""
    from rmm.keys import keyset

    try:
        keys = keyset.cached()  # what this process signs with (loaded once; a rotation reloads it)
    finally:
        connection.close()  # as for the database: this thread is not a request's
    for purpose in keyset.PURPOSES:
        keys.signer(purpose)
    return None
