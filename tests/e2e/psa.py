"""A stand-in PSA: a real HTTP server on 127.0.0.1 that records the webhooks it receives."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class PsaReceiver:
    secret = "psa-webhook-test-secret"

    def __init__(self):
        self.received: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                expected = "sha256=" + hmac.new(receiver.secret.encode(), body, hashlib.sha256).hexdigest()
                signed = hmac.compare_digest(self.headers.get("X-RMM-Signature", ""), expected)
                receiver.received.append({"signed": signed, "body": json.loads(body)})
                self.send_response(204 if signed else 401)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/rmm-webhook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_for(self, job_id: str, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for item in self.received:
                if item["body"].get("job_id") == job_id:
                    return item
            time.sleep(0.2)
        raise AssertionError(f"the PSA was not told about job {job_id}")

    def close(self):
        self.httpd.shutdown()
