"""The agent protocol: enroll, heartbeat (with lease, held while idle), result, live output, and
the fetch of a step's artefacts. See docs/agent.md.

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
from concurrent.futures import Executor

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.files.storage import default_storage
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from rmm.core import dependencies
from rmm.core.errors import ServiceError
from rmm.core.text import storable
from rmm.engine import intake, wakeups
from rmm.engine import services as engine
from rmm.engine.services import fetching
from rmm.engine.services import output as live_output
from rmm.history import services as history
from rmm.inventory import services as inventory
from rmm.keys import keyset
from rmm_agent.protocol import CAPABILITIES, MAX_BODY_BYTES, PROTOCOL_VERSION

logger = logging.getLogger("django.request")  # where Django logs a view's failure


def _body(request: HttpRequest) -> dict | JsonResponse:
    """The call's JSON object, or the JSON error that answers it: 413 past the protocol's bound
    (read from the stream here, so Django's DATA_UPLOAD_MAX_MEMORY_SIZE does not apply), 400
    for anything that is not one JSON object (nesting too deep for the parser included). Each
    field is checked where it is used: a number may be infinite or NaN (1e400, Infinity)."""
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    call = serving.get()
    too_large = call is not None and call.too_large  # the handler stopped reading at the bound
    raw = b"" if too_large or declared > MAX_BODY_BYTES else request.read(MAX_BODY_BYTES + 1)
    if too_large or declared > MAX_BODY_BYTES or len(raw) > MAX_BODY_BYTES:
        return JsonResponse(
            {
                "detail": f"The body is larger than the agent protocol allows ({MAX_BODY_BYTES} bytes).",
                "max_bytes": MAX_BODY_BYTES,
            },
            status=413,
        )
    try:
        data = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        data = None
    return data if isinstance(data, dict) else _bad_json()


def _bad_json() -> JsonResponse:
    return JsonResponse({"detail": "The body must be a JSON object."}, status=400)


def _agent(request: HttpRequest):
    """The authenticated agent of the call, or None. Under the agent protocol's handler a
    credential not seen lately was checked before the body was read (rmm/asgi.py) and is not
    checked again; the handler learns what was found here otherwise."""
    call = serving.get()
    if call is not None and call.checked:
        return call.agent
    agent = inventory.authenticate_agent(request.headers.get("Authorization", ""))
    if call is not None:
        call.checked, call.agent = True, agent
    return agent


def _unauthorized(request: HttpRequest) -> JsonResponse:
    if request.headers.get("Authorization", "").startswith("Agent "):
        inventory.record_unauthenticated_refusal(
            request.META.get("REMOTE_ADDR", ""),
            "agent.call",
            reason="unknown, revoked or wrong agent credential",
            payload={"agent_id": _claimed_agent_id(request), "path": request.path},
        )
    response = JsonResponse({"detail": "Agent credential missing, wrong or revoked."}, status=401)
    response["WWW-Authenticate"] = "Agent"
    return response


# Set by the agent protocol's ASGI handler (rmm/asgi.py): a few long-lived threads for the sync
# part of every agent call. Unset (the test client, the rest of the site): Django's own threads.
sync_executor: contextvars.ContextVar[Executor | None] = contextvars.ContextVar("agent_sync_executor", default=None)


class Serving:
    """One agent call as the agent protocol's handler serves it: ``gone`` resolves when the
    client has gone, so a held heartbeat stops holding; a held heartbeat's view leaves its hold
    in ``held`` and returns, and the handler holds it once the request is let go
    (:func:`finish_hold`). What the handler found before the view: ``limited``, the Retry-After
    of a caller past the refusal limit (rmm/engine/agent_limits.py); ``checked`` and ``agent``,
    the credential checked before the body was read; ``too_large``, a body past the bound, not
    read further."""

    __slots__ = ("gone", "held", "limited", "checked", "agent", "too_large")

    def __init__(self, gone: asyncio.Future) -> None:
        self.gone, self.held = gone, None
        self.limited, self.checked, self.agent, self.too_large = 0, False, None, False


# Set by the same handler. Unset (the test client): the view holds a held heartbeat itself.
serving: contextvars.ContextVar[Serving | None] = contextvars.ContextVar("agent_serving", default=None)


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
    if not isinstance(data, dict):
        return data
    try:
        agent, secret = inventory.enroll_agent(
            str(data.get("token") or ""),
            data.get("facts") or {},
            request.META.get("REMOTE_ADDR", ""),
            capabilities=_capabilities(data.get("capabilities")) or "",
            protocol=_protocol(data.get("protocol")),
        )
    except ServiceError as exc:
        return JsonResponse(exc.as_dict(), status=exc.status_code)
    keys = keyset.cached()
    pinned = keys.get(keyset.INSTRUCTIONS, agent.signing_key_id)
    return JsonResponse(
        {
            "agent_id": str(agent.pk),
            "asset_id": str(agent.asset_id),
            "secret": secret,
            "server_public_key": pinned.public_key_b64,
            "server_key_id": pinned.key_id,
            "server_keys": {key.key_id: key.public_key_b64 for key in keys.active(keyset.INSTRUCTIONS)},
            # the keys that sign the agent's own releases, pinned like the instruction keys
            "release_keys": {key.key_id: key.public_key_b64 for key in keys.active(keyset.RELEASES)},
            "heartbeat_interval": settings.RMM_HEARTBEAT_INTERVAL,
        },
        status=201,
    )


@csrf_exempt
@require_POST
async def heartbeat(request: HttpRequest) -> JsonResponse:
    """Check in, lease, learn what to abort. With ``wait`` (seconds), an agent with nothing to
    do is answered only when the server has something for it or the time is up: one request per
    interval does both the check-in and the wake-up (docs/agent.md). While held, it holds no
    thread and no database connection, only an entry in :mod:`rmm.engine.wakeups`; under the
    agent protocol's handler, not even the request (:func:`finish_hold`)."""
    data = _body(request)
    if not isinstance(data, dict):
        return await run_sync(_heartbeat, request, data)
    hold = _hold_seconds(data.get("wait"))
    if not hold:
        return await run_sync(_heartbeat, request, data)
    # Listening before the first look for work: a wake-up sent after that look is not missed.
    waiter = await wakeups.listen(_claimed_agent_id(request))
    try:
        response = await run_sync(_heartbeat, request, data)
    except BaseException:
        waiter.close()
        raise
    held = getattr(response, "held", None)
    if held is None:
        waiter.close()
        return response
    held.waiter, held.deadline = waiter, asyncio.get_running_loop().time() + hold
    call = serving.get()
    if call is not None:
        call.held = held  # the agent protocol's handler holds it, once the request is let go
        return response
    answer = await held.wait()
    return response if answer is None else JsonResponse(answer)


async def finish_hold(response: HttpResponse, held: _Held) -> HttpResponse:
    """Hold a heartbeat that the view handed over, after the request, its middleware and its view
    have all returned: each held heartbeat then keeps far fewer objects alive, and thousands of
    them are what the workers' young collections scan (docs/performance.md). Woken with work,
    the answer is written into the same response, keeping the headers the middleware set; a
    failure while looking for work is answered 503 when a dependency is down (rmm.core.dependencies),
    else 500, logged as Django logs a view's."""
    if getattr(response, "held", None) is None:  # not the view's idle answer: a middleware's error
        held.waiter.close()
        return response
    try:
        answer = await held.wait()
    except Exception as exc:
        unavailable = dependencies.response_for(None, exc)  # a dependency down: 503, logged by name
        if unavailable is not None:
            return unavailable
        logger.exception("Internal Server Error: a held heartbeat's look for work")
        response.status_code, answer = 500, {"detail": "Server error."}
    if answer is not None:
        response.content = json.dumps(answer, cls=DjangoJSONEncoder)
        response["Content-Length"] = str(len(response.content))
    return response


class _Held:
    """A held heartbeat: what it needs to look for work again when woken, and its ear."""

    __slots__ = ("agent", "running", "capacity", "answer", "waiter", "deadline")

    def __init__(self, agent, running: list, capacity: int, answer: dict) -> None:
        self.agent, self.running, self.capacity, self.answer = agent, running, capacity, answer
        self.waiter: wakeups.Waiter | None = None
        self.deadline = 0.0

    async def wait(self) -> dict | None:
        """Until woken with work for the agent (its answer) or the time is up (None)."""
        loop = asyncio.get_running_loop()
        call = serving.get()
        gone = call.gone if call is not None else None
        try:
            while await self.waiter.wait(self.deadline - loop.time(), gone):
                answer = await run_sync(_look_again, self)
                if answer is not None:
                    return answer
            return None
        finally:
            self.waiter.close()


def _heartbeat(request: HttpRequest, data: dict | JsonResponse) -> JsonResponse:
    agent = _agent(request)
    if agent is None:
        return _unauthorized(request)
    if not isinstance(data, dict):
        return data
    problems, reports = _heartbeat_problems(data)
    if problems:
        return JsonResponse(problems, status=400)
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
    rebooted = data.get("rebooted")
    if isinstance(rebooted, str) and agent.rebooting_until is not None:  # rare: before the check-in sees its work
        engine.came_back(agent, rebooted[:64], now)
    keys = keyset.cached()  # checked against the registry's version that the check-in returns
    capabilities = _capabilities(data.get("capabilities"))
    seen = engine.check_in(
        agent,
        now,
        str(data.get("agent_version") or "")[:50],
        keys.acknowledged(data.get("key_ids")),
        _protocol(data.get("protocol")),
        capabilities if capabilities != agent.capabilities else None,
    )
    if seen.keys_version != keys.version:
        keys = keyset.current(seen.keys_version)
    facts_required, facts_wanted = False, []
    facts = data.get("facts")
    try:
        if reports is not None:  # facts by namespace (protocol v2)
            facts_wanted = inventory.record_namespaces(agent, reports, now, seen.namespace_hashes)
        elif isinstance(facts, dict):  # one blob with one hash (protocol v1)
            inventory.record_facts(agent, facts, now, seen.facts_hash)
        elif data.get("facts_hash"):
            facts_required = seen.facts_hash != data["facts_hash"]
    except ServiceError as exc:
        return JsonResponse(exc.as_dict(), status=exc.status_code)
    running = data.get("running") if isinstance(data.get("running"), list) else []
    try:
        capacity = int(data.get("capacity", 1))
    except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite number (1e400)
        capacity = 1
    leased = engine.lease(agent, capacity, now, seen.switch) if seen.work_waiting else []
    answer = {
        "interval": settings.RMM_HEARTBEAT_INTERVAL,
        "instructions": [engine.envelope(inst) for inst in leased],
        "abort": engine.to_abort(agent, running, seen.switch),
        "facts_required": facts_required,
    }
    if reports is not None:
        answer["facts_wanted"] = facts_wanted
    new_secret = inventory.issue_rotated_secret(agent)
    if new_secret:
        answer["new_secret"] = new_secret
    key_update = keys.update_for(data.get("key_ids"))
    if key_update:
        answer["signing_keys"] = key_update
    release_update = keys.update_for(data.get("release_key_ids"), keyset.RELEASES)
    if release_update:
        answer["release_keys"] = release_update
    response = JsonResponse(answer)
    if not (leased or answer["abort"] or facts_required or facts_wanted or new_secret):
        response.held = _Held(agent, running, capacity, answer)  # nothing to say yet: it may wait
    return response


def _protocol(value) -> int:
    """The protocol the agent says it speaks: 1 when it says nothing usable (agents from before
    the field), at most what this server knows."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return 1
    return min(value, PROTOCOL_VERSION)


def _capabilities(value) -> str | None:
    """The capabilities an agent names, as stored (known ones, sorted, comma-separated); None
    when it names none (a v1 agent: what is stored stays)."""
    if not isinstance(value, list):
        return None
    return ",".join(sorted({item for item in value if isinstance(item, str) and item in CAPABILITIES}))


def _heartbeat_problems(data: dict) -> tuple[dict, list | None]:
    """What in a heartbeat cannot be stored, by field (400, and nothing is changed), and its fact
    namespaces as the server uses them (None: it sent none). The other fields are hints: one
    that is not usable counts as absent."""
    problems, reports = {}, None
    if not storable(str(data.get("agent_version") or "")):
        problems["agent_version"] = ["Must not contain NUL or lone surrogates."]
    facts = data.get("facts")
    try:
        if "namespaces" in data:
            reports = inventory.clean_fact_reports(data["namespaces"])
        elif isinstance(facts, dict):  # anything else is ignored, as the other hints are
            inventory.clean_facts(facts)
    except ServiceError as exc:
        problems.update(exc.as_dict())
    return problems, reports


def _look_again(held: _Held) -> dict | None:
    """Woken: the heartbeat's answer if there is now work, an abort or a new secret for it, else
    None."""
    now = timezone.now()
    look = engine.look_for_work(held.agent, now)
    leased = engine.lease(held.agent, held.capacity, now, look.switch) if look.work_waiting else []
    abort = engine.to_abort(held.agent, held.running, look.switch)
    new_secret = inventory.issue_rotated_secret(held.agent, requested=look.rotating)
    if not (leased or abort or new_secret):
        return None
    answer = dict(held.answer, instructions=[engine.envelope(inst) for inst in leased], abort=abort)
    if new_secret:
        answer["new_secret"] = new_secret
    return answer


def _claimed_agent_id(request: HttpRequest) -> str:
    """The agent id the caller claims (authenticated afterwards, before anything is answered)."""
    header = request.headers.get("Authorization", "")
    return header[6:].partition(":")[0][:64] if header.startswith("Agent ") else ""


def _hold_seconds(value) -> float:
    """How long an idle heartbeat may be held: what the agent asks, at most one heartbeat
    interval, at least 1 s; 0 (answer at once) when it asks for nothing usable."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        return 0.0
    return min(max(1.0, float(settings.RMM_HEARTBEAT_INTERVAL)), max(1.0, float(value)))


@csrf_exempt
@require_POST
async def result(request: HttpRequest) -> JsonResponse:
    checked = await run_sync(_checked_call, request)
    if isinstance(checked, JsonResponse):
        return checked
    status, answer = await intake.take_in(*checked, run_sync)
    return JsonResponse(answer, status=status)


def _checked_call(request: HttpRequest) -> JsonResponse | tuple:
    """The call's agent and body, or the answer that refuses it."""
    agent = _agent(request)
    if agent is None:
        return _unauthorized(request)
    data = _body(request)
    if not isinstance(data, dict):
        return data
    return agent, data


@csrf_exempt
@require_POST
async def output(request: HttpRequest) -> JsonResponse:
    """What a running instruction printed lately, for its job page (docs/agent.md, Live output)."""
    return await run_sync(_output, request)


def _output(request: HttpRequest) -> JsonResponse:
    checked = _checked_call(request)
    if isinstance(checked, JsonResponse):
        return checked
    try:
        return JsonResponse(live_output.take_output(*checked))
    except ServiceError as exc:
        response = JsonResponse(exc.as_dict(), status=exc.status_code)
        if isinstance(exc, live_output.TooFrequent):
            response["Retry-After"] = str(exc.retry_after)
        return response


# What one read of an artefact's blob hands to the event loop while it is streamed: each stream
# holds about one read and one in its socket's buffer, so this times the streams at once is the
# worker's memory for them (64 KiB: Django's own chunk; at 256 KiB, 300 streams took 2.5 times the
# memory for the same CPU: docs/performance.md, Artefact downloads).
ARTEFACT_CHUNK = 64 * 1024


@require_GET
async def artefact(request: HttpRequest, instruction_id, sha256: str) -> HttpResponse:
    """One artefact of a running instruction, for its agent (docs/agent.md, Artefacts): streamed
    from the blob store a chunk at a time, one byte range of it with ``Range``, or left to the
    proxy (``X-Accel-Redirect``) where ``RMM_ARTEFACT_ACCEL_REDIRECT`` names its location."""
    opened = await run_sync(_artefact, request, instruction_id, sha256)
    if isinstance(opened, HttpResponse):
        return opened
    fh, start, end, size = opened
    ranged = request.headers.get("Range", "").startswith("bytes=")
    response = StreamingHttpResponse(
        _blob_chunks(fh, end - start + 1), status=206 if ranged else 200, content_type="application/octet-stream"
    )
    response["Content-Length"] = str(end - start + 1)
    if ranged:
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
    response["Accept-Ranges"] = "bytes"
    response["Cache-Control"] = "no-store"
    return response


def _artefact(request: HttpRequest, instruction_id, sha256: str):
    """The refusal that answers the call, or (open blob, first byte, last byte, size)."""
    agent = _agent(request)
    if agent is None:
        return _unauthorized(request)
    query = request.GET
    try:
        fetch = fetching.check(
            agent, str(instruction_id), sha256, query.get("expires"), query.get("token"), timezone.now()
        )
    except ServiceError as exc:
        return JsonResponse(exc.as_dict(), status=exc.status_code)
    if settings.RMM_ARTEFACT_ACCEL_REDIRECT:  # the proxy serves the bytes, ranges included
        response = HttpResponse(content_type="application/octet-stream")
        response["X-Accel-Redirect"] = settings.RMM_ARTEFACT_ACCEL_REDIRECT.rstrip("/") + "/" + fetch.blob
        return response
    try:
        size = default_storage.size(fetch.blob)
        fh = default_storage.open(fetch.blob, "rb")
    except OSError:  # FileNotFoundError included
        exc = fetching.blob_missing(agent, str(instruction_id), fetch)
        return JsonResponse(exc.as_dict(), status=exc.status_code)
    wanted = _byte_range(request.headers.get("Range", ""), size)
    if wanted is None:
        fh.close()
        response = JsonResponse({"detail": "The range is not satisfiable.", "size": size}, status=416)
        response["Content-Range"] = f"bytes */{size}"
        return response
    fh.seek(wanted[0])
    return fh, wanted[0], wanted[1], size


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) byte to send: the whole blob without a ``bytes=`` Range, the one range
    asked for, or None when it cannot be served (malformed, several, or past the end: 416)."""
    if not header.startswith("bytes="):
        return 0, size - 1
    first, dash, last = header[6:].strip().partition("-")
    try:
        if not dash or "," in last:
            return None
        if not first:  # the last n bytes
            count = int(last)
            return (max(0, size - count), size - 1) if count > 0 and size else None
        begin = int(first)
        end = min(int(last), size - 1) if last else size - 1
    except ValueError:
        return None
    return (begin, end) if 0 <= begin <= end else None


async def _blob_chunks(fh, length: int):
    """The next ``length`` bytes of ``fh``, read in the loop's default threads; no further once
    the agent has gone (under the agent protocol's handler: the server would read on into a
    closed connection). ``fh`` is closed at the end."""
    loop = asyncio.get_running_loop()
    call = serving.get()
    try:
        while length > 0 and not (call is not None and call.gone.done()):
            chunk = await loop.run_in_executor(None, fh.read, min(ARTEFACT_CHUNK, length))
            if not chunk:
                break
            length -= len(chunk)
            yield chunk
    finally:
        fh.close()
