"""HTTP transport to the server: JSON POSTs and GETs over urllib, with timeouts, under the
transport policy of :mod:`rmm_agent.tls` (every agent call goes through :class:`Client`)."""

from __future__ import annotations

import email.utils
import http.client
import json
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from . import __version__, tls
from .protocol import PROTOCOL_VERSION, encode_body

DEFAULT_TIMEOUT = 30.0
ENROLL_PATH = "/api/v1/agent/enroll/"
HEARTBEAT_PATH = "/api/v1/agent/heartbeat/"
RESULTS_PATH = "/api/v1/agent/results/"
OUTPUT_PATH = "/api/v1/agent/output/"


class TransportError(Exception):
    """The server could not be reached or did not answer (the request may be retried)."""


class Unauthorized(Exception):
    """The server answered 401: this agent is revoked or unknown."""


@dataclass
class Response:
    """A server answer: status, parsed JSON body (or None) and headers."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def detail(self) -> str:
        """The server's human-readable error, for messages."""
        if isinstance(self.body, dict) and self.body.get("detail"):
            return str(self.body["detail"])
        if self.body not in (None, "", {}):
            return json.dumps(self.body)[:500]
        return f"HTTP {self.status}"

    def retry_after(self, default: float = 30.0, maximum: float = 3600.0) -> float:
        """Seconds to wait before asking again, from Retry-After (seconds or HTTP date)."""
        value = self.headers.get("retry-after", "").strip()
        seconds = default
        if value:
            try:
                seconds = float(value)
            except ValueError:
                try:
                    when = email.utils.parsedate_to_datetime(value)
                    seconds = when.timestamp() - time.time()
                except (TypeError, ValueError):
                    seconds = default
        return max(0.0, min(seconds, maximum))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow redirects: a redirected POST would silently lose its body."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class Client:
    """Posts JSON to one server, authenticated once the agent has credentials."""

    def __init__(
        self,
        server: str,
        *,
        agent_id: str | None = None,
        secret: str | None = None,
        ca_file: str | None = None,
        allow_insecure_http: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        tls.check_server(server, allow_insecure_http=allow_insecure_http)  # raises InsecureServer
        self.server = server.rstrip("/")
        self.agent_id = agent_id
        self.secret = secret
        self.ca_file = ca_file  # the websocket of a remote session pins it too
        self.timeout = timeout
        handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
        if self.server.startswith("https://"):
            handlers.append(urllib.request.HTTPSHandler(context=tls.context(ca_file)))
        self._opener = urllib.request.build_opener(*handlers)

    def post(self, path: str, body: dict, *, timeout: float | None = None) -> Response:
        """POST ``body`` as JSON; HTTP errors are returned, transport failures raised."""
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"rmm-agent/{__version__}",
        }
        if self.agent_id and self.secret:
            headers["Authorization"] = f"Agent {self.agent_id}:{self.secret}"
        # The scheme is restricted to http(s) by tls.check_server in __init__, so no file:// or custom schemes.
        request = urllib.request.Request(  # noqa: S310
            self.server + path,
            data=encode_body(body),
            headers=headers,
            method="POST",
        )
        try:
            with self._opener.open(request, timeout=timeout or self.timeout) as answer:
                return _response(answer.status, answer.read(), answer.headers)
        except urllib.error.HTTPError as error:
            try:
                raw = error.read()
            except (OSError, http.client.HTTPException):
                raw = b""
            return _response(error.code, raw, error.headers)
        except (
            TimeoutError,
            urllib.error.URLError,
            http.client.HTTPException,
            ssl.SSLError,
            OSError,
        ) as error:
            raise _transport_error(self.server + path, error) from error

    def download(self, path: str, *, offset: int = 0, timeout: float | None = None) -> tuple[int, dict[str, str], Any]:
        """GET a file of the server from byte ``offset`` on (a Range request past 0): its status,
        its lower-cased headers and the open answer, which the caller reads and closes. HTTP
        errors are returned too; transport failures raised."""
        headers = {"User-Agent": f"rmm-agent/{__version__}", "Accept-Encoding": "identity"}
        if self.agent_id and self.secret:
            headers["Authorization"] = f"Agent {self.agent_id}:{self.secret}"
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(self.server + path, headers=headers, method="GET")  # noqa: S310 - http(s) only
        try:
            answer = self._opener.open(request, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as error:
            answer = error
        except (TimeoutError, urllib.error.URLError, http.client.HTTPException, ssl.SSLError, OSError) as error:
            raise _transport_error(self.server + path, error) from error
        lowered = {key.lower(): value for key, value in (answer.headers or {}).items()}
        status = answer.code if isinstance(answer, urllib.error.HTTPError) else answer.status
        return status, lowered, answer

    def enroll(self, token: str, facts: dict, capabilities: list[str]) -> Response:
        """Exchange a one-time enrollment token for an identity, saying what this agent can do:
        work created before its first heartbeat is then signed for what it can do."""
        body = {"token": token, "facts": facts, "capabilities": capabilities, "protocol": PROTOCOL_VERSION}
        return self.post(ENROLL_PATH, body)

    def heartbeat(self, body: dict) -> Response:
        """Check in: report running work, lease new instructions, learn what to abort. With
        ``wait`` in the body the server may hold the answer that long while it has nothing."""
        hold = body.get("wait") or 0
        return self.post(HEARTBEAT_PATH, body, timeout=(self.timeout + hold) if hold else None)

    def post_result(self, result: dict, *, timeout: float | None = None) -> Response:
        """Deliver one result (the server deduplicates by instruction id)."""
        return self.post(RESULTS_PATH, result, timeout=timeout)

    def post_output(self, body: dict, *, timeout: float | None = None) -> Response:
        """Send what a running instruction printed lately (rmm_agent/live.py)."""
        return self.post(OUTPUT_PATH, body, timeout=timeout)


def _transport_error(url: str, error: BaseException) -> TransportError:
    """The failure to reach ``url``, named clearly when it is an untrusted certificate."""
    reason = getattr(error, "reason", error)
    return TransportError(f"{url}: {tls.untrusted(reason) or reason}")


def _response(status: int, raw: bytes, headers: Any) -> Response:
    """Build a :class:`Response`, tolerating non-JSON bodies from proxies and error pages."""
    try:
        body = json.loads(raw.decode("utf-8")) if raw else None
    except (UnicodeDecodeError, ValueError):
        body = {"detail": raw.decode("utf-8", "replace")[:500]}
    lowered = {key.lower(): value for key, value in (headers or {}).items()}
    return Response(status=status, body=body, headers=lowered)
