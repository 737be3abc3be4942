"""The broker's connection to MeshCentral's control websocket against a websocket server on
127.0.0.1 that answers as MeshCentral did when it left a handshake unanswered (HTTP 408) or cut it
off: one more connection is made, and only for those; any other refusal is final."""

from __future__ import annotations

import socket
import threading
from http import HTTPStatus

import pytest
from websockets.sync.server import serve

from sessions.providers.meshcentral import MeshCentralError, MeshCentralProvider

CUT = 0


@pytest.fixture
def server():
    """A websocket server whose next answers to the upgrade are the statuses queued in ``answers``
    (101: MeshCentral's first message, its serverinfo; ``CUT``: the connection closed unanswered),
    counting the upgrades it saw."""
    answers: list[int] = []
    seen: list[int] = []

    def process_request(connection, request):
        status = answers.pop(0) if answers else HTTPStatus.SWITCHING_PROTOCOLS
        seen.append(status)
        if status == CUT:
            connection.socket.shutdown(socket.SHUT_RDWR)
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "")
        if status != HTTPStatus.SWITCHING_PROTOCOLS:
            return connection.respond(status, "")
        return None

    def handler(ws):
        ws.send('{"action": "serverinfo", "serverinfo": {"domain": ""}}')
        for _ in ws:
            pass

    with serve(handler, "127.0.0.1", 0, process_request=process_request) as ws_server:
        thread = threading.Thread(target=ws_server.serve_forever, daemon=True)
        thread.start()
        port = ws_server.socket.getsockname()[1]
        yield MeshCentralProvider(f"http://127.0.0.1:{port}", "broker", "secret", timeout=5), answers, seen
        ws_server.shutdown()
        thread.join()


def test_a_handshake_answered_408_is_tried_once_more(server):
    broker, answers, seen = server
    answers.append(HTTPStatus.REQUEST_TIMEOUT)
    with broker.control() as mc:
        assert mc.serverinfo == {"domain": ""}
    assert seen == [HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.SWITCHING_PROTOCOLS]


def test_two_unanswered_handshakes_or_another_refusal_are_final(server):
    broker, answers, seen = server
    answers.extend([HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.REQUEST_TIMEOUT])
    with pytest.raises(MeshCentralError, match="HTTP 408"):
        broker.control()
    assert len(seen) == 2
    answers.append(HTTPStatus.FORBIDDEN)
    with pytest.raises(MeshCentralError, match="HTTP 403"):
        broker.control()
    assert seen[2:] == [HTTPStatus.FORBIDDEN]


def test_a_handshake_cut_off_is_tried_once_more(server):
    broker, answers, seen = server
    answers.append(CUT)
    with broker.control() as mc:
        assert mc.serverinfo == {"domain": ""}
    assert seen == [CUT, HTTPStatus.SWITCHING_PROTOCOLS]
    answers.extend([CUT, CUT])
    with pytest.raises(MeshCentralError, match="cannot reach MeshCentral"):
        broker.control()
    assert seen[2:] == [CUT, CUT]
