"""A webhook receiver for tests: a real HTTP server on 127.0.0.1 that keeps every request as it came
(headers and raw body), answers 503 to its first ``fail_first`` calls and 204 after, or redirects
every call to ``redirect_to``. It keeps connections open (HTTP/1.1) and counts them. Signatures are
checked by the test, with the secret it expects."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    def __init__(self, fail_first: int = 0, redirect_to: str = ""):
        self.calls: list[dict] = []  # every request, answered or not: {"headers", "raw", "status", "at"}
        self.fail_first = fail_first
        self.redirect_to = redirect_to
        self.connections = 0
        self.sockets: list = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                receiver.connections += 1
                receiver.sockets.append(self.request)
                super().setup()

            def do_POST(self):  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                at = time.time()
                headers = {key.lower(): value for key, value in self.headers.items()}
                if receiver.redirect_to:
                    status = 307
                elif len(receiver.calls) < receiver.fail_first:
                    status = 503
                else:
                    status = 204
                receiver.calls.append({"headers": headers, "raw": raw, "status": status, "at": at})
                self.send_response(status)
                if status == 307:
                    self.send_header("Location", receiver.redirect_to)
                if status != 204:
                    self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def accepted(self) -> list[dict]:
        return [call for call in self.calls if call["status"] == 204]

    def types(self) -> list[str]:
        """The event type of each accepted call, de-duplicated by ``webhook-id`` (as a receiver would)."""
        seen = {call["headers"]["webhook-id"]: json.loads(call["raw"])["type"] for call in self.accepted}
        return sorted(seen.values())

    def close_connections(self) -> None:
        """Close every open connection, as a receiver does with idle keep-alive ones."""
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.sockets = []

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
