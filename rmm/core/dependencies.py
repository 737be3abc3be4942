"""What the server needs to serve, and how it answers while one of those is down.

The dependencies are the database, Redis (when ``REDIS_URL`` is set), the evidence store and the
signing key. A request that fails because one of them is down is answered ``503`` with a JSON
reason and ``Retry-After``, never a 500 (:func:`server_error`, :func:`api_response`), and the
log (logger ``rmm.core.dependencies``) names the dependency when it goes down and when it is back.

While the database cannot be reached, a process answers 503 at once instead of making every
request wait for the connection pool (:class:`FailFastMiddleware`): one request a second goes
through to find out whether it is back, and the first connection made marks it up again.
``/healthz`` and ``/readyz`` (:mod:`rmm.console.health`) report the same states. docs/operations.md.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.db import InterfaceError as DjangoInterfaceError
from django.db.backends.signals import connection_created
from django.http import HttpRequest, JsonResponse
from django.views import defaults

logger = logging.getLogger("rmm.core.dependencies")

DATABASE = "database"
REDIS = "redis"
EVIDENCE_STORAGE = "evidence_storage"
SIGNING_KEY = "signing_key"
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
PROBE_SECONDS = 1.0  # while the database is down, one request per this long tries it
# PostgreSQL states that mean no connection (class 08, the server shutting down or starting,
# too many connections); other operational errors (deadlock, lock or statement timeout) are
# transient failures of one request: answered 503, but the database is not marked down.
_OUTAGE_STATES = ("08", "57P01", "57P02", "57P03", "53300")
_SQLITE_UNAVAILABLE = ("database is locked", "unable to open database", "disk i/o error", "database or disk is full")


class Unavailable(Exception):
    """Raised where a dependency refuses (the evidence store, the signing key): answered 503."""

    def __init__(self, dependency: str, reason: str) -> None:
        super().__init__(f"{dependency} unavailable: {reason}")
        self.dependency, self.reason = dependency, reason


@dataclass
class _Down:
    since: float  # monotonic
    reason: str
    next_probe: float = 0.0


_lock = threading.Lock()
_down: dict[str, _Down] = {}


def mark_down(dependency: str, reason: str) -> None:
    """Note that ``dependency`` failed; logged when it goes down, not on every failure."""
    now = time.monotonic()
    with _lock:
        state = _down.get(dependency)
        if state is None:
            _down[dependency] = _Down(now, reason, now + PROBE_SECONDS)
        else:
            state.reason, state.next_probe = reason, now + PROBE_SECONDS
    if state is None:
        logger.warning("%s unavailable: %s", dependency, reason)


def mark_up(dependency: str) -> None:
    """Note that ``dependency`` served again (cheap when it was up: called on every connection)."""
    if dependency not in _down:
        return
    with _lock:
        state = _down.pop(dependency, None)
    if state is not None:
        logger.warning("%s available again after %.1f s", dependency, time.monotonic() - state.since)


def down_reason(dependency: str) -> str | None:
    state = _down.get(dependency)
    return state.reason if state is not None else None


def database_marked_down() -> bool:
    """Whether the database is down as last seen, without taking the probe's turn."""
    return DATABASE in _down


def database_gate() -> str | None:
    """None when a request may use the database; the reason it is down while it is, except for
    one request per PROBE_SECONDS, which goes through to find out whether it is back."""
    state = _down.get(DATABASE)
    if state is None:
        return None
    with _lock:
        now = time.monotonic()
        if now >= state.next_probe:
            state.next_probe = now + PROBE_SECONDS
            return None
        return state.reason


def _database_connected(sender, connection, **kwargs) -> None:
    mark_up(DATABASE)


connection_created.connect(_database_connected, dispatch_uid="rmm.core.dependencies.database_connected")


# --- what failed --------------------------------------------------------------------------


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:300]
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def kind(exc: BaseException) -> str:
    """The name of the error at the root of ``exc`` (``PoolTimeout``, ``PermissionError`` …)."""
    *_, root = _chain(exc)
    return root.__class__.__name__


def classify(exc: BaseException) -> tuple[str, str, bool] | None:
    """(dependency, reason, outage) when ``exc`` means a dependency failed, else None. An outage
    (no connection at all) marks the dependency down; a transient failure of one request does not."""
    import psycopg
    import redis.exceptions

    for err in _chain(exc):
        if isinstance(err, Unavailable):
            return err.dependency, err.reason, True
        if getattr(err, "dependency", None) == SIGNING_KEY:  # rmm.keys.keyset.KeyUnavailable
            return SIGNING_KEY, short(err), True
        if isinstance(err, psycopg.InterfaceError):
            return DATABASE, short(err), True
        if isinstance(err, psycopg.OperationalError):
            state = getattr(err, "sqlstate", None)
            return DATABASE, short(err), state is None or state.startswith(_OUTAGE_STATES)
        if isinstance(err, sqlite3.OperationalError):
            message = str(err).lower()
            if any(text in message for text in _SQLITE_UNAVAILABLE):
                return DATABASE, short(err), False
            return None  # a bad statement is a bug, not an outage
        if isinstance(err, DjangoInterfaceError):  # Django's own "connection already closed"
            return DATABASE, short(err), True
        if isinstance(err, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
            return REDIS, short(err), True
    return None


def noted(exc: BaseException) -> tuple[str, str] | None:
    """Classify ``exc`` and mark an outage down; (dependency, reason) or None."""
    found = classify(exc)
    if found is None:
        return None
    dependency, reason, outage = found
    if outage:
        mark_down(dependency, reason)
    return dependency, reason


# --- what is answered ---------------------------------------------------------------------


def unavailable_response(dependency: str) -> JsonResponse:
    response = JsonResponse(
        {"detail": f"Service unavailable: the {dependency} cannot be used now; retry later.", "dependency": dependency},
        status=503,
    )
    response["Retry-After"] = str(settings.RMM_UNAVAILABLE_RETRY_AFTER)
    response["Cache-Control"] = "no-store"
    return response


def response_for(request: HttpRequest | None, exc: BaseException) -> JsonResponse | None:
    """The 503 for a request that failed because a dependency is down (logged with the
    dependency, without a traceback), or None for any other failure."""
    found = noted(exc)
    if found is None:
        return None
    dependency, reason = found
    where = f"{request.method} {request.path}" if request is not None else "a request"
    logger.warning("%s answered 503: %s unavailable: %s", where, dependency, reason)
    response = unavailable_response(dependency)
    response._has_been_logged = True  # said above, in one line: Django would log it again with a traceback
    return response


def api_response(exc: BaseException, context: dict) -> JsonResponse | None:
    """For the REST API's exception handler (rmm.core.api), which defers to this first."""
    return response_for(context.get("request"), exc)


def server_error(request: HttpRequest):
    """``handler500``: a dependency that failed is a 503, anything else Django's 500 page."""
    exc = sys.exc_info()[1]
    response = response_for(request, exc) if exc is not None else None
    return response if response is not None else defaults.server_error(request)


class RedisFallbackThrottle:
    """For a DRF throttle counting in the cache: while Redis is down, count in this process (as
    without Redis), so that the API, the kill switch first, keeps answering; logged as Redis down."""

    def allow_request(self, request, view):
        from redis.exceptions import ConnectionError, TimeoutError

        try:
            allowed = super().allow_request(request, view)
        except (ConnectionError, TimeoutError) as exc:
            mark_down(REDIS, short(exc))
            self.cache = _process_cache()
            return super().allow_request(request, view)
        mark_up(REDIS)
        return allowed


@functools.cache
def _process_cache():
    from django.core.cache.backends.locmem import LocMemCache

    return LocMemCache("rmm-rate-limit-fallback", {})


class FailFastMiddleware:
    """While the database is down, answer at once (503, Retry-After) rather than let each request
    wait for the connection pool; the health probes always go through. A view's dependency
    failure becomes its 503 here (``server_error`` catches what fails in other middleware)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def refusal(self, request: HttpRequest) -> JsonResponse | None:
        if request.path in PROBE_PATHS:
            return None
        if database_gate() is None:
            return None
        response = unavailable_response(DATABASE)
        response._has_been_logged = True  # the outage is logged once, when it begins, not per request
        return response

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        return self.refusal(request) or self.get_response(request)

    async def __acall__(self, request):
        return self.refusal(request) or await self.get_response(request)

    def process_exception(self, request, exception):
        return response_for(request, exception)
