"""One HTTP(S) connection to a webhook endpoint, kept open across the deliveries of a batch.

urllib opens a connection per request; a batch of deliveries to one receiver reuses one here
(HTTP/1.1 keep-alive), and opens a new one when the receiver closed it. Redirects are not
followed: the caller treats any answer but 2xx as a failed attempt.
"""

from __future__ import annotations

import http.client
import ssl
from urllib.parse import urlsplit

HTTPException = http.client.HTTPException
EXCERPT = 500  # bytes of an answer's body kept with a failed attempt
DRAIN = 64 * 1024  # an answer's body read to keep the connection; a longer one closes it


class Connection:
    def __init__(self, url: str, timeout: float):
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname or "", parts.port
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.timeout = timeout
        self._open: http.client.HTTPConnection | None = None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._open is None:
            if self.https:
                self._open = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.timeout, context=ssl.create_default_context()
                )
            else:
                self._open = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._open

    def post(self, body: bytes, headers: dict) -> tuple[int, str]:
        """POST ``body``; the answer's status and the start of its body. A connection the receiver
        closed while it was idle is opened again once (were it a repeat, the receiver drops it by
        its id)."""
        reused = self._open is not None
        try:
            return self._post(body, headers)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            self.close()
            if not reused:
                raise
        return self._post(body, headers)

    def _post(self, body: bytes, headers: dict) -> tuple[int, str]:
        connection = self._connection()
        try:
            connection.request("POST", self.target, body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read(DRAIN)
            if response.will_close or not response.isclosed():
                self.close()
        except BaseException:
            self.close()
            raise
        return response.status, answer[:EXCERPT].decode("utf-8", "replace")
