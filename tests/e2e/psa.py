"""A stand-in PSA: a real HTTP server on 127.0.0.1 that receives the outbox's webhooks.

Each request is verified as a receiver should, with the Standard Webhooks library, and recorded:
``id`` (the ``webhook-id``), ``signed``, ``raw`` (the body's bytes) and ``body``, the event's
``data`` with its ``type`` added as ``event`` (what a PSA's handler reads). ``fail_next`` makes
the next calls answer 503; :meth:`stop` and :meth:`start` take it down and up on the same port.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


class PsaReceiver:
    secret = "whsec_cHNhLXdlYmhvb2stdGVzdC1zZWNyZXQtMzJieXRlcyE="

    def __init__(self):
        self.received: list[dict] = []
        self.refused: list[dict] = []  # calls answered 503 on purpose (fail_next)
        self.fail_next = 0
        self.port = 0
        self.start()
        self.url = f"http://127.0.0.1:{self.port}/rmm-webhook"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {key.lower(): value for key, value in self.headers.items()}
                if receiver.fail_next > 0:
                    receiver.fail_next -= 1
                    receiver.refused.append({"id": headers.get("webhook-id"), "raw": raw})
                    self.send_response(503)
                    self.end_headers()
                    return
                try:
                    message = Webhook(receiver.secret).verify(raw, headers)
                    signed = True
                except WebhookVerificationError:
                    message, signed = json.loads(raw), False
                body = {**message.get("data", {}), "event": message.get("type")}
                receiver.received.append({"id": headers.get("webhook-id"), "signed": signed, "raw": raw, "body": body})
                self.send_response(204 if signed else 401)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def wait_for(self, job_id: str, timeout: float = 20, event: str = "job.finished") -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for item in self.received:
                if item["body"].get("job_id") == job_id and item["body"]["event"] == event:
                    return item
            time.sleep(0.2)
        raise AssertionError(f"the PSA was not told about job {job_id}")

    def close(self):
        self.stop()
