"""Stand-in collectors for the SIEM feed, real servers on 127.0.0.1.

:class:`HttpCollector` plays Splunk HEC (``/services/collector/event``) and Elastic (``/_bulk``):
it keeps each request as it came, answers 503 while ``down`` is set, and, like Elastic, refuses a
document whose ``_id`` it holds already (409 in the item). :class:`SyslogCollector` reads RFC 6587
octet-counted frames over TCP (and TLS), keeps every message and closes its side at our end of the
stream, as rsyslog does; :meth:`stop` and :meth:`start` take it down and up on the same port.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HttpCollector:
    def __init__(self):
        self.calls: list[dict] = []
        self.down = False
        self.lose_answers = 0  # store the next calls' documents, but answer 503 (an answer lost)
        self.ids: set[str] = set()
        self.duplicates = 0  # documents refused because their _id was stored already
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {key.lower(): value for key, value in self.headers.items()}
                status, answer = collector.answer(self.path, raw)
                stored = status == 200
                if stored and collector.lose_answers > 0:
                    collector.lose_answers -= 1
                    status = 503
                call = {"path": self.path, "headers": headers, "raw": raw, "status": status, "stored": stored}
                collector.calls.append(call)
                body = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, path: str, raw: bytes) -> tuple[int, dict]:
        if self.down:
            return 503, {"text": "down"}
        if path == "/_bulk":
            lines = raw.decode().splitlines()
            items = []
            for action in lines[::2]:
                _id = json.loads(action)["create"]["_id"]
                items.append({"create": {"_id": _id, "status": 409 if _id in self.ids else 201}})
                self.duplicates += _id in self.ids
                self.ids.add(_id)
            return 200, {"errors": any(item["create"]["status"] != 201 for item in items), "items": items}
        return 200, {"text": "Success", "code": 0}

    @property
    def accepted(self) -> list[dict]:
        return [call for call in self.calls if call["status"] == 200]

    def splunk_events(self) -> list[dict]:
        """Every HEC event accepted, in the order received (back-to-back JSON objects)."""
        found, decoder = [], json.JSONDecoder()
        for call in self.accepted:
            text, at = call["raw"].decode(), 0
            while at < len(text):
                item, at = decoder.raw_decode(text, at)
                found.append(item)
                while at < len(text) and text[at].isspace():
                    at += 1
        return found

    def elastic_documents(self) -> list[dict]:
        """Every document stored (not a duplicate), in order, lost answers included."""
        stored, seen = [], set()
        for call in self.calls:
            if not call["stored"]:
                continue
            lines = call["raw"].decode().splitlines()
            for action, document in zip(lines[::2], lines[1::2], strict=True):
                _id = json.loads(action)["create"]["_id"]
                if _id not in seen:
                    seen.add(_id)
                    stored.append(json.loads(document))
        return stored

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def read_frames(data: bytes) -> list[bytes]:
    """Split an RFC 6587 octet-counted stream into its messages."""
    messages, at = [], 0
    while at < len(data):
        space = data.index(b" ", at)
        length = int(data[at:space])
        messages.append(data[space + 1 : space + 1 + length])
        at = space + 1 + length
    return messages


class SyslogCollector:
    def __init__(self, context: ssl.SSLContext | None = None):
        self.messages: list[bytes] = []
        self.context = context
        self.port = 0
        self.start()

    def start(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.port = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        data = b""
        try:
            if self.context is not None:
                conn = self.context.wrap_socket(conn, server_side=True)
            while chunk := conn.recv(65536):
                data += chunk
            self.messages.extend(read_frames(data))  # kept before our end says it was read
            if self.context is not None:
                conn = conn.unwrap()
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread; stops listening
        self.listener.close()

    def close(self) -> None:
        self.stop()
