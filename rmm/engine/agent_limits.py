"""The agent protocol's limit on callers that are not authenticated agents (docs/security.md,
Refusals by unknown callers): each refusal such a caller gets (any 4xx) is counted per client
address in the cache, in windows of ``RMM_AGENT_REFUSAL_WINDOW_SECONDS``; past
``RMM_AGENT_REFUSALS_PER_WINDOW`` in a window, the address's callers are answered 429 before
anything else is done, from the cache alone: no database, no body read, nothing recorded.

An agent's credential that this deployment has accepted in the last hour passes the limit: it is
remembered in this process and, shared by every worker, in the cache (as its sha256), so agents
behind the address of a flood keep being served. The database still checks it afterwards.

Only the cache holds state here (Redis when ``REDIS_URL`` is set, else each process's own). While
Redis is down, the counts are kept in the process, as the API's rate limit does.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import math
import time

from django.conf import settings
from django.core.cache import caches
from django.http import JsonResponse

from rmm.core import dependencies

TRUST_SECONDS = 3600  # how long an accepted credential passes the limit without being seen again
_MEMO_MAX = 200_000  # credentials remembered in this process; forgotten all at once past it
_trusted_here: dict[str, float] = {}  # credential digest -> until when (monotonic) it is trusted


def client_address(scope: dict) -> str:
    """The caller's address as the ASGI server gives it (the proxy's address behind a proxy,
    unless the server is started with its proxy-headers option)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def source(address: str) -> str:
    """Whom refusals are counted against: an IPv4 address, or the /64 network of an IPv6 one (a
    host is commonly given a whole /64, and could otherwise call from a fresh address each time)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is None:
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(getattr(ip, "ipv4_mapped", None) or ip)


def _digest(header: str) -> str:
    return hashlib.sha256(header.encode("utf-8", "surrogatepass")).hexdigest()


def _count_key(address: str, now: float) -> tuple[str, float]:
    """The address's counter in the current window, and when that window ends (epoch seconds)."""
    window = max(settings.RMM_AGENT_REFUSAL_WINDOW_SECONDS, 0.001)
    bucket = math.floor(now / window)
    return f"{settings.RMM_INSTANCE_NAME}:agent-refusals:{source(address)}:{bucket}", (bucket + 1) * window


def _trust_key(digest: str) -> str:
    return f"{settings.RMM_INSTANCE_NAME}:agent-trusted:{digest}"


@functools.cache
def shared_cache():
    """One cache client for the whole process. ``django.core.cache.cache`` is one per request
    context under ASGI, closed by ``request_finished``, which the agent handler does not send:
    each call would have left a Redis connection pool open (10,000 agents ran Redis out of
    clients in the benchmark). Redis-py's pool is thread-safe."""
    return caches.create_connection("default")


def cached(operation):
    """``operation(cache)`` on the shared cache; in this process's own while Redis is down."""
    cache = shared_cache()
    if not settings.REDIS_URL:
        return operation(cache)
    from redis.exceptions import ConnectionError, TimeoutError

    try:
        result = operation(cache)
    except (ConnectionError, TimeoutError) as exc:
        dependencies.mark_down(dependencies.REDIS, dependencies.short(exc))
        return operation(dependencies._process_cache())
    dependencies.mark_up(dependencies.REDIS)
    return result


def trusted_here(header: str) -> bool:
    """Whether this process accepted this credential lately: such a call skips the limit without
    a look at the cache (the path of every known agent's every call)."""
    if not header.startswith("Agent "):
        return False
    until = _trusted_here.get(_digest(header))
    return until is not None and until > time.monotonic()


def trust(header: str) -> None:
    """The database accepted this credential: let it pass the limit, here and in every worker.
    This process remembers it for half of ``TRUST_SECONDS`` and the cache for all of it, so the
    process's next look (when its memo ends) still finds it in the cache, flood or not, and
    renews both."""
    digest = _digest(header)
    if len(_trusted_here) >= _MEMO_MAX:
        _trusted_here.clear()
    _trusted_here[digest] = time.monotonic() + TRUST_SECONDS / 2
    cached(lambda c: c.set(_trust_key(digest), 1, TRUST_SECONDS))


def distrust(header: str) -> None:
    """The database refused a credential that was trusted (the agent was revoked, or its secret
    rotated away): it is limited like any unknown caller's from now on, here and everywhere."""
    digest = _digest(header)
    _trusted_here.pop(digest, None)
    cached(lambda c: c.delete(_trust_key(digest)))


def retry_after(address: str, header: str) -> int:
    """0 when the call may go on; else the seconds until the address's window ends (its
    Retry-After). Cache only: one look for an unknown caller, two when it is limited and shows an
    agent credential."""
    key, ends = _count_key(address, time.time())
    refusals = cached(lambda c: c.get(key, 0))
    if refusals < settings.RMM_AGENT_REFUSALS_PER_WINDOW:
        return 0
    if header.startswith("Agent ") and cached(lambda c: c.get(_trust_key(_digest(header)))):
        return 0
    return max(1, math.ceil(ends - time.time()))


def count(address: str) -> None:
    """One more refusal answered to a caller from ``address`` in the current window."""
    key, ends = _count_key(address, time.time())
    timeout = max(1, math.ceil(ends - time.time()) + 1)

    def add(c) -> None:
        c.add(key, 0, timeout)
        try:
            c.incr(key)
        except ValueError:  # the window ended between the two
            c.set(key, 1, timeout)

    cached(add)


def too_many(seconds: int) -> JsonResponse:
    """The answer to a limited caller."""
    response = JsonResponse(
        {
            "detail": "Too many refused calls from this address; try again later.",
            "retry_after": seconds,
        },
        status=429,
    )
    response["Retry-After"] = str(seconds)
    return response
