"""Sending a batch of history events to a SIEM destination. A batch is acknowledged (and only then
does the destination's cursor move) when the collector has taken all of it: over syslog, when it
has read everything up to our end of the stream and closed its side; over HTTP, a 2xx answer (for
Elastic, with no item refused but as a duplicate). Anything else raises :class:`DeliveryError`."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Sequence
from urllib.parse import urlsplit

from django.conf import settings

from rmm.history.models import HistoryEvent
from rmm.outbox import addresses
from rmm.siem import records
from rmm.siem.models import Destination, Kind, Shape

SYSLOG_PORT, SYSLOG_TLS_PORT = 514, 6514
RESPONSE_EXCERPT = 300


class DeliveryError(Exception):
    pass


def host_port(destination_kind: str, address: str, tls: bool) -> tuple[str, int]:
    """A syslog address ``host:port`` (``[v6]:port``); the port defaults to 514, or 6514 with TLS."""
    if destination_kind != Kind.SYSLOG:
        raise ValueError("not a syslog destination")
    parts = urlsplit("//" + address.strip())
    if not parts.hostname or parts.path or parts.query or parts.fragment or parts.username:
        raise ValueError("Must be host:port.")
    return parts.hostname, parts.port or (SYSLOG_TLS_PORT if tls else SYSLOG_PORT)


def refusal(kind: str, address: str, tls: bool) -> str | None:
    """Why events may not be sent to this address (the webhooks' check against SSRF), or None."""
    if kind == Kind.SYSLOG:
        try:
            host, port = host_port(kind, address, tls)
        except ValueError as exc:
            return f"Not host:port: {exc}"
        return addresses.refusal(f"http://{_bracketed(host)}:{port}/")
    reason = addresses.refusal(address)
    if reason is None and (urlsplit(address).scheme == "https") != tls:
        return "tls must be true for an https address and false for an http one."
    return reason


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def tls_context(destination: Destination) -> ssl.SSLContext:
    """Verifies the collector's certificate and name: against its CA when it has one, else the system's."""
    try:
        return ssl.create_default_context(cadata=destination.ca_certificate or None)
    except (ssl.SSLError, ValueError, TypeError) as exc:
        raise DeliveryError(f"the CA certificate is not usable: {exc}") from exc


def hostname() -> str:
    return settings.RMM_SIEM_HOSTNAME or socket.gethostname()


def send(destination: Destination, events: Sequence[HistoryEvent]) -> None:
    """Deliver ``events`` (in chain order) or raise :class:`DeliveryError`; the address is checked
    again first, since what a name resolves to can change."""
    reason = refusal(destination.kind, destination.address, destination.tls)
    if reason:
        raise DeliveryError(f"the address is refused: {reason}")
    if destination.kind == Kind.SYSLOG:
        name = hostname()
        frames = records.octet_counted(records.syslog_message(e, destination.format, name) for e in events)
        _send_syslog(destination, frames)
    elif destination.shape == Shape.SPLUNK_HEC:
        body = records.splunk_hec(events, destination.format, hostname(), destination.index)
        _post(destination, "/services/collector/event", body, "application/json", f"Splunk {destination.token}")
    else:
        body = records.elastic_bulk(events, destination.format, destination.index)
        auth = f"ApiKey {destination.token}" if destination.token else ""
        answer = _post(destination, "/_bulk", body, "application/x-ndjson", auth)
        _check_bulk(answer)


def _send_syslog(destination: Destination, frames: bytes) -> None:
    """Write the frames and end our side of the stream, then wait for the collector to end its
    own: it does so once it has read everything before our end (rsyslog, syslog-ng). With TLS the
    ends are close_notify alerts. A reset, a refused connection or a timeout fails the batch, which
    is sent again whole."""
    host, port = host_port(destination.kind, destination.address, destination.tls)
    context = tls_context(destination) if destination.tls else None
    try:
        with socket.create_connection((host, port), timeout=settings.RMM_SIEM_TIMEOUT_SECONDS) as raw:
            if context is None:
                raw.sendall(frames)
                raw.shutdown(socket.SHUT_WR)
                while raw.recv(4096):
                    pass
                return
            with context.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(frames)
                # close_notify, then the collector's; a collector that closes instead read ours too
                with contextlib.suppress(ssl.SSLEOFError, ssl.SSLZeroReturnError):
                    tls.unwrap()
    except (OSError, ssl.SSLError) as exc:
        raise DeliveryError(f"syslog {host}:{port}: {exc.__class__.__name__}: {exc}") from exc


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is a failed attempt: following it could reach an address the check refused."""

    def redirect_request(self, *args, **kwargs):
        return None


def _post(destination: Destination, path: str, body: bytes, content_type: str, authorization: str) -> bytes:
    url = destination.address.rstrip("/") + path
    headers = {"Content-Type": content_type, "User-Agent": "rmm-siem"}
    if authorization:
        headers["Authorization"] = authorization
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)  # noqa: S310 - checked
    handlers = [_NoRedirects]
    if destination.tls:
        handlers.append(urllib.request.HTTPSHandler(context=tls_context(destination)))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(request, timeout=settings.RMM_SIEM_TIMEOUT_SECONDS) as response:
            if not 200 <= response.status < 300:
                raise DeliveryError(f"HTTP {response.status}")
            return response.read()
    except urllib.error.HTTPError as exc:
        excerpt = exc.read(RESPONSE_EXCERPT).decode("utf-8", "replace")
        raise DeliveryError(f"HTTP {exc.code}: {excerpt}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DeliveryError(f"{exc.__class__.__name__}: {exc}") from exc


def _check_bulk(answer: bytes) -> None:
    """Elastic answers 200 even when items failed: each must be created, or exist already (409)."""
    try:
        result = json.loads(answer)
    except ValueError as exc:
        raise DeliveryError("the _bulk answer is not JSON") from exc
    if not isinstance(result, dict) or not result.get("errors"):
        return
    for item in result.get("items", []):
        outcome = next(iter(item.values()), {}) if isinstance(item, dict) else {}
        if outcome.get("status") not in (200, 201, 409):
            raise DeliveryError(f"_bulk refused an item: {json.dumps(outcome)[:RESPONSE_EXCERPT]}")
