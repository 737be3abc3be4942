"""Law 7, the remote-session routes: technicians and admins open sessions on assets of their sites,
every role lists and reads those of its sites, and a session or asset of another site answers as a
missing one. Session policies: every role reads those of its sites, an admin proposes one for a site
of theirs, an approver decides one of theirs (harness: tests/support/authorization.py)."""

from __future__ import annotations

import pytest

from sessions.models import SessionPolicy
from tests.support.authorization import (
    APPROVE,
    IN,
    MANAGE_ACCESS,
    OPEN_SESSIONS,
    Row,
    World,
    api,
    callers,
    check,
    ids,
    only,
    page,
)


def _policy_decided(status: str):
    def check(w) -> bool:
        return SessionPolicy.objects.filter(pk=w.ids["session_policy"], approval_status=status).exists()

    return check


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
    api("GET", "/api/v1/session-policies/", 200, shows=(("session_policy", IN),)),
    api("GET", "/api/v1/session-policies/{session_policy}/", 200, 404, hidden=("session_policy",)),
    api(
        "POST",
        "/api/v1/session-policies/",
        only(MANAGE_ACCESS, 201, 403),
        only(MANAGE_ACCESS, 404, 403),
        body={"site": "alpha", "allowed": False},
    ),
    api(
        "POST",
        "/api/v1/session-policies/{session_policy}/approve/",
        only(APPROVE, 200, 403),
        404,
        hidden=("session_policy",),
        effect=(_policy_decided("approved"), callers(APPROVE, "in")),
    ),
    api(
        "POST",
        "/api/v1/session-policies/{session_policy}/reject/",
        only(APPROVE, 200, 403),
        404,
        body={"reason": "no"},
        hidden=("session_policy",),
        effect=(_policy_decided("rejected"), callers(APPROVE, "in")),
    ),
    page("GET", "/console/sessions/", 200),
    page("GET", "/console/sessions/{new_id}/", 404),
    page("POST", "/console/sessions/{new_id}/end/", 404, body={}),
    page("GET", "/console/sessions/{new_id}/recording.cast", 404),
]


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_matrix(row: Row, matrix: World):
    check(row, matrix)
