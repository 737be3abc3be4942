"""Server-side hooks for the fleet benchmark, loaded only by its settings (bench/settings.py).

- :class:`QueryCountMiddleware` counts the database queries each request makes, per endpoint
  (the heartbeat is split into idle heartbeats and those that leased work);
- ``/api/v1/agent/bench/bare/`` is the bare endpoint: the same stack as the heartbeat (same
  middleware, same agent authentication, a sync view) answering a constant;
- ``/api/v1/agent/bench/stats/`` gives this process's counts, CPU time, peak memory and
  garbage-collector pauses per generation, and ``POST`` to it resets the counts and pauses.
"""

from __future__ import annotations

import contextvars
import gc
import os
import resource
import threading
import time

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.db import connections
from django.db.backends.signals import connection_created
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from rmm.engine import agent_views
from rmm.engine.agent_views import run_sync
from rmm.inventory import services as inventory

_queries: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("bench_queries", default=None)
_lock = threading.Lock()
_totals: dict[str, list[float]] = {}  # label -> [requests, queries, seconds]


def _count(execute, sql, params, many, context):
    box = _queries.get()
    if box is not None:
        box[0] += 1
    return execute(sql, params, many, context)


def _install(sender, connection, **kwargs) -> None:
    """Every connection of this process counts into the request that uses it."""
    if _count not in connection.execute_wrappers:
        connection.execute_wrappers.append(_count)


connection_created.connect(_install)

_gc_started = [0.0]
_gc: dict[int, list[float]] = {}  # generation -> [collections, seconds, longest]


def _gc_timer(phase: str, info: dict) -> None:
    """How long each collection stops the process (every thread: it holds the GIL)."""
    if phase == "start":
        _gc_started[0] = time.perf_counter()
        return
    took = time.perf_counter() - _gc_started[0]
    row = _gc.setdefault(info["generation"], [0, 0.0, 0.0])
    row[0] += 1
    row[1] += took
    row[2] = max(row[2], took)


gc.callbacks.append(_gc_timer)


def _label(request: HttpRequest, response: HttpResponse) -> str:
    label = request.path
    if label == "/api/v1/agent/heartbeat/" and response.status_code == 200:
        label += " (idle)" if b'"instructions": []' in response.content else " (lease)"
    elif response.status_code >= 400:
        label += f" ({response.status_code})"
    return label


def _record(label: str, queries: int, seconds: float) -> None:
    with _lock:
        row = _totals.setdefault(label, [0, 0, 0.0])
        row[0] += 1
        row[1] += queries
        row[2] += seconds


class QueryCountMiddleware:
    """Outermost middleware: the queries of the whole request, middleware included."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        box = [0]
        token = _queries.set(box)
        started = time.perf_counter()
        try:
            response = self.get_response(request)
        finally:
            _queries.reset(token)
        _record(_label(request, response), box[0], time.perf_counter() - started)
        return response

    async def __acall__(self, request):
        box = [0]
        token = _queries.set(box)
        started = time.perf_counter()
        try:
            response = await self.get_response(request)
        finally:
            _queries.reset(token)
        call = agent_views.serving.get()
        if call is not None and call.held is not None:  # held by the handler after this returns
            call.held = _CountedHold(call.held, request.path, box, started)  # counted till the end
            return response
        _record(_label(request, response), box[0], time.perf_counter() - started)
        return response


class _CountedHold:
    """A held heartbeat's wait (rmm/asgi.py holds it after the middleware), its queries counted
    into its request's."""

    def __init__(self, held, path: str, box: list[int], started: float) -> None:
        self.held, self.path, self.box, self.started = held, path, box, started
        self.waiter = held.waiter

    async def wait(self) -> dict | None:
        token = _queries.set(self.box)
        label = self.path + " (500)"  # unless it ends
        try:
            answer = await self.held.wait()
            label = self.path + (" (lease)" if answer and answer["instructions"] else " (idle)")
            return answer
        finally:
            _queries.reset(token)
            _record(label, self.box[0], time.perf_counter() - self.started)


@csrf_exempt
async def bare(request: HttpRequest) -> JsonResponse:
    """The heartbeat's stack without its work: authenticate the agent, answer a constant."""
    return await run_sync(_bare, request)


def _bare(request: HttpRequest) -> JsonResponse:
    if request.method != "POST":
        return JsonResponse({"detail": "POST only."}, status=405)
    if inventory.authenticate_agent(request.headers.get("Authorization", "")) is None:
        return JsonResponse({"detail": "Agent credential missing, wrong or revoked."}, status=401)
    return JsonResponse({"ok": True})


@csrf_exempt
def stats(request: HttpRequest) -> JsonResponse:
    """GET: this process's figures since the last reset; POST: reset the counts."""
    with _lock:
        if request.method == "POST":
            _totals.clear()
            _gc.clear()
        endpoints = {
            label: {"requests": int(n), "queries": int(q), "seconds": round(s, 6)}
            for label, (n, q, s) in _totals.items()
        }
    usage = resource.getrusage(resource.RUSAGE_SELF)
    pool = getattr(connections["default"], "pool", None)
    return JsonResponse(
        {
            "pid": os.getpid(),
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "max_rss_kib": usage.ru_maxrss,
            "threads": threading.active_count(),
            "db_pool": pool.get_stats() if pool is not None else None,
            "endpoints": endpoints,
            "gc_objects": [len(gc.get_objects(generation)) for generation in range(3)] + [gc.get_freeze_count()],
            "gc": {
                str(gen): {"collections": int(n), "seconds": round(total, 4), "longest_ms": round(1000 * most, 1)}
                for gen, (n, total, most) in sorted(_gc.items())
            },
        }
    )


urlpatterns = [
    path("api/v1/agent/bench/bare/", bare, name="bench-bare"),
    path("api/v1/agent/bench/stats/", stats, name="bench-stats"),
]
