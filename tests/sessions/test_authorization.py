"""Law 7, the remote-session routes: technicians and admins open sessions on assets of their sites,
every role lists and reads those of its sites, and a session or asset of another site answers as a
missing one (harness: tests/support/authorization.py)."""

from __future__ import annotations

import pytest

from tests.support.authorization import OPEN_SESSIONS, Row, World, api, check, ids, only, page

ROWS = [
    api("GET", "/api/v1/remote-sessions/", 200),
    api("GET", "/api/v1/remote-sessions/{new_id}/", 404, label="no such session"),
    api("POST", "/api/v1/remote-sessions/{new_id}/end/", 404, label="no such session"),
    api("POST", "/api/v1/remote-sessions/{new_id}/approve/", 404, label="no such session"),
    api("POST", "/api/v1/remote-sessions/{new_id}/reject/", 404, body={"reason": "no"}, label="no such session"),
    api(
        "POST",
        "/api/v1/remote-sessions/",
        only(OPEN_SESSIONS, 409, 403),
        only(OPEN_SESSIONS, 404, 403),
        body={"asset": "{asset}", "session_type": "terminal", "provider": "terminal", "psa_task_id": "{task}"},
        hidden=("asset",),
        label="an agent that cannot relay",
    ),
    page("GET", "/console/sessions/", 200),
    page("GET", "/console/sessions/{new_id}/", 404),
    page("POST", "/console/sessions/{new_id}/end/", 404, body={}),
    page("GET", "/console/sessions/{new_id}/recording.cast", 404),
]


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_matrix(row: Row, matrix: World):
    check(row, matrix)
