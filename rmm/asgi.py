"""The ASGI application: the agent protocol to its own lean handler, the rest of the site to
Django's, websockets to Channels."""

import asyncio
import gc
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rmm.settings")
os.environ.setdefault("RMM_DB_POOL", "1")  # a connection pool per ASGI process (see rmm/settings.py)
django.setup(set_prefix=False)

from asgiref.sync import markcoroutinefunction, sync_to_async
from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.files.base import ContentFile
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.db import connections
from django.middleware.security import SecurityMiddleware
from django.urls import set_script_prefix
from django.utils.module_loading import import_string

from rmm.console.routing import websocket_urlpatterns
from rmm.core import dependencies
from rmm.core.dependencies import PROBE_PATHS, FailFastMiddleware
from rmm.engine import agent_limits, agent_views
from rmm.inventory import services as inventory
from rmm_agent.protocol import MAX_BODY_BYTES
from sessions.routing import AGENT_WEBSOCKETS, agent_websocket_urlpatterns, browser_websocket_urlpatterns

AGENT_PREFIX = "/api/v1/agent/"
CREDENTIAL_PATHS = frozenset(  # rmm/urls.py
    {"/api/v1/agent/heartbeat/", "/api/v1/agent/results/", "/api/v1/agent/output/"}
)
AGENT_SYNC_THREADS = 4  # enough to overlap database round trips; the GIL allows no more work than one


class PooledASGIHandler(ASGIHandler):
    """Django's ASGI handler that gives a killed request's database connection back to the pool.

    When a client goes away and the view outlives the server's patience, the server cancels the
    request; Django then never signals its end, and the pool would lose that connection for good.
    """

    async def handle(self, scope, receive, send) -> None:
        try:
            await super().handle(scope, receive, send)
        except asyncio.CancelledError:
            await sync_to_async(connections.close_all)()  # after the view, in the request's own thread
            raise


class AgentEdgeMiddleware:
    """What the agent protocol keeps of the site's middleware, run on the event loop:
    ALLOWED_HOSTS (as CommonMiddleware checks it), SecurityMiddleware's HTTPS redirect and
    headers, and a Content-Length."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.security = SecurityMiddleware(get_response)  # its two hooks are pure: called inline
        markcoroutinefunction(self)

    async def __call__(self, request):
        request.get_host()  # DisallowedHost, answered 400, outside ALLOWED_HOSTS
        call = agent_views.serving.get()
        if call is not None and call.limited:  # the handler found the address past its limit
            response = agent_limits.too_many(call.limited)
        else:
            response = self.security.process_request(request) or await self.get_response(request)
        response = self.security.process_response(request, response)
        if not response.streaming and not response.has_header("Content-Length"):
            response.headers["Content-Length"] = str(len(response.content))
        return response


async def _until_disconnect(receive, gone: asyncio.Future) -> None:
    """Read the client's messages until ``http.disconnect``, then resolve ``gone``."""
    while (await receive())["type"] != "http.disconnect":
        pass
    if not gone.done():
        gone.set_result(True)


class AgentProtocolHandler(ASGIHandler):
    """Django for the agent protocol, the path every agent calls forever, and for the health
    probes: the same settings, URLs and views as the rest of the site, with only
    :class:`AgentEdgeMiddleware` and :class:`~rmm.core.dependencies.FailFastMiddleware`.

    Under ASGI each of Django's sync middleware costs two thread hops per request, which the
    fleet benchmark measured as most of a heartbeat's CPU (docs/performance.md). An agent uses no
    session, cookie, CSRF token, login or second factor, and gets JSON, not pages.
    """

    def __init__(self) -> None:
        super().__init__()
        self.executor = ThreadPoolExecutor(max_workers=AGENT_SYNC_THREADS, thread_name_prefix="agent-sync")
        self.watchers: set[asyncio.Task] = set()

    async def __call__(self, scope, receive, send) -> None:
        # Django would start a thread for each request's sync code, from the event loop, and keep
        # it, idle, as long as a long-poll waits. Agent views run theirs in this handler's few
        # threads instead (agent_views.run_sync); what little Django itself does in sync code
        # (its request signals) runs in the process's one shared sync thread.
        token = agent_views.sync_executor.set(self.executor)
        try:
            await self.handle(scope, receive, send)
        finally:
            agent_views.sync_executor.reset(token)

    async def handle(self, scope, receive, send) -> None:
        """Django's ``ASGIHandler.handle``, leaner where every agent call pays for it:

        - without the request_started and request_finished signals, each a hop to the process's
          one shared sync thread; their work is done by ``agent_views.run_sync``, which gives the
          database connection back as each call's sync part ends;
        - without cancelling anything when a call ends normally. Django runs the view in a task
          and cancels its disconnect listener; each cancellation leaves an exception whose
          traceback ties the request into a reference cycle, which for a held heartbeat only a
          full collection frees (docs/performance.md). Here the view runs inline and the
          listener ends by itself: both daphne and uvicorn send ``http.disconnect`` once the
          response is complete. A held heartbeat whose client left stops holding through
          ``agent_views.serving``;
        - holding an idle heartbeat here (``agent_views.finish_hold``), once the request, the
          middleware and the view have returned, so that the thousands held at once keep few
          objects alive.
        """
        path, header = scope["path"], _header(scope, b"authorization")
        address = agent_limits.client_address(scope)
        limited = checked = too_large = False
        agent = None
        # A credential this process accepted lately (every agent's every call, but the first of
        # each hour) skips both looks: the view checks it, as it always did, in its one hop.
        known = agent_limits.trusted_here(header)
        if path.startswith(AGENT_PREFIX) and not known:
            limited = await agent_views.run_sync(agent_limits.retry_after, address, header)
        # While the database is down the middleware answers 503 at once: no look at it here. A
        # look that fails on the database leaves the answer to the middleware too, never a 500.
        if not limited and not known and path in CREDENTIAL_PATHS and not dependencies.database_marked_down():
            try:
                agent, checked = await agent_views.run_sync(_authenticate, header), True
            except Exception as exc:
                if dependencies.noted(exc) is None:
                    raise
        if limited or (checked and agent is None):
            body_file = ContentFile(b"")  # refused before its body is read
        else:
            try:
                body_file, too_large = await self.read_bounded_body(receive, _declared_length(scope))
            except RequestAborted:
                return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            return
        gone = asyncio.get_running_loop().create_future()
        # Listening for the client's leaving reads what is left of the body: not when it was
        # refused unread (such a call is answered at once, never held).
        unread = limited or too_large or (checked and agent is None)
        watcher = None if unread else asyncio.ensure_future(_until_disconnect(receive, gone))
        call = agent_views.Serving(gone)
        call.limited, call.checked, call.agent, call.too_large = limited, checked, agent, too_large
        token = agent_views.serving.set(call)
        try:
            response = await self.run_get_response(request)
            refused = 400 <= response.status_code < 500 and call.agent is None and not limited
            if refused and path.startswith(AGENT_PREFIX):  # a caller that is not an agent: counted
                if known:  # trusted until now: no longer (revoked, or rotated away)
                    await agent_views.run_sync(agent_limits.distrust, header)
                await agent_views.run_sync(agent_limits.count, address)
            if call.held is not None:
                # Let the request and its body go while the heartbeat is held. This handler never
                # calls response.close(), so the closer Django left on it (request.close, which
                # keeps the request alive) would never run anyway.
                response._resource_closers.clear()
                body_file.close()
                request = body_file = None
                response = await agent_views.finish_hold(response, call.held)
            await self.send_response(response, send)
        finally:
            agent_views.serving.reset(token)
            if body_file is not None:
                body_file.close()
            if watcher is not None:
                self.watchers.add(watcher)  # kept until it ends, so it is never collected while pending
                watcher.add_done_callback(self.watchers.discard)

    async def read_bounded_body(self, receive, declared: int | None):
        """The body, read up to the agent protocol's bound (``MAX_BODY_BYTES``), and whether it
        is larger: a declared ``Content-Length`` over the bound is not read at all, a chunked
        body no further than the bound (the view then answers the protocol's JSON 413)."""
        if declared is not None and declared > MAX_BODY_BYTES:
            return ContentFile(b""), True
        body_file = tempfile.SpooledTemporaryFile(  # noqa: SIM115 closed with the request, as Django's own
            max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE, mode="w+b"
        )
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                body_file.close()
                raise RequestAborted()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                body_file.close()
                return ContentFile(b""), True
            body_file.write(chunk)
            if not message.get("more_body", False):
                break
        body_file.seek(0)
        return body_file, False

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware, self._template_response_middleware, self._exception_middleware = [], [], []
        handler = convert_exception_to_response(self._get_response_async)
        handler = convert_exception_to_response(FailFastMiddleware(handler))
        handler = convert_exception_to_response(AgentEdgeMiddleware(handler))
        for path in settings.RMM_AGENT_TIER_MIDDLEWARE:
            handler = convert_exception_to_response(import_string(path)(handler))
        self._middleware_chain = handler


def _header(scope: dict, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def _declared_length(scope: dict) -> int | None:
    try:
        return int(_header(scope, b"content-length"))
    except ValueError:
        return None


def _authenticate(header: str):
    """The agent of this credential, or None; an accepted one passes the refusal limit."""
    agent = inventory.authenticate_agent(header)
    if agent is not None:
        agent_limits.trust(header)
    return agent


def skip_twisted_form_parsing() -> None:
    """Under daphne, stop Twisted from parsing every POST body that has a content type as an HTML
    form (through the ``email`` package) into ``request.args``, which daphne never reads: it
    hands the raw body to Django, which parses what it needs. The fleet benchmark measured that
    parsing at a sixth of a worker's CPU (docs/performance.md). No setting of daphne's reaches
    Twisted's ``parsePOSTFormSubmission``; this sets it on each request daphne creates."""
    try:
        from daphne.http_protocol import WebRequest
    except ImportError:  # not served by daphne
        return
    if getattr(WebRequest, "rmm_form_parsing_skipped", False):
        return
    create = WebRequest.__init__

    def __init__(self, *args, **kwargs) -> None:
        create(self, *args, **kwargs)
        self._parsePOSTFormSubmission = False

    WebRequest.__init__ = __init__
    WebRequest.rmm_form_parsing_skipped = True


def tune_garbage_collector() -> None:
    """A worker holding thousands of agents' heartbeats has about a million live objects, and
    with CPython's default thresholds it scanned all of them every few seconds: the fleet
    benchmark measured full collections of about a second each, half of the workers' CPU and
    every heartbeat's worst latency (docs/performance.md). The objects made while starting are
    frozen out of every scan, and the thresholds (``RMM_GC_THRESHOLDS``, by default CPython's
    young thresholds with a far larger third) make full collections rare; agent calls leave no
    cyclic garbage, and other short-lived cycles still go in young collections."""
    gc.freeze()
    gc.set_threshold(*settings.RMM_GC_THRESHOLDS)


skip_twisted_form_parsing()
django_asgi_app = PooledASGIHandler()
agent_asgi_app = AgentProtocolHandler()


async def http_app(scope, receive, send) -> None:
    """Agents and the health probes to the lean handler; people, the PSA and the API to the full site."""
    path = scope["path"]
    app = agent_asgi_app if path.startswith(AGENT_PREFIX) or path in PROBE_PATHS else django_asgi_app
    await app(scope, receive, send)


agent_websockets = URLRouter(agent_websocket_urlpatterns)
browser_websockets = AllowedHostsOriginValidator(
    AuthMiddlewareStack(URLRouter([*websocket_urlpatterns, *browser_websocket_urlpatterns]))
)


async def websocket_app(scope, receive, send) -> None:
    """Browsers' websockets must come from this site (their Origin); an agent's remote-session
    relay sends none: its consumer checks its credential instead."""
    app = agent_websockets if scope["path"].startswith(AGENT_WEBSOCKETS) else browser_websockets
    await app(scope, receive, send)


tune_garbage_collector()  # last: what was made while starting is frozen
application = ProtocolTypeRouter(
    {
        "http": http_app,
        "websocket": websocket_app,
    }
)
