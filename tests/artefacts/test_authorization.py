"""Law 7, the one approval queue in the admin (jobs, script versions and a site's session policy
versions), for every role, in-site and out-of-site (harness: tests/support/authorization.py)."""

from __future__ import annotations

import pytest

from scripting.models import Script, ScriptJob
from sessions.models import SessionPolicy
from tests.support.authorization import APPROVE, STAFF, Row, World, callers, check, ids, only, page


def _job_decided(w) -> bool:
    return ScriptJob.objects.filter(pk=w.ids["job_waiting"], status="queued").exists()


def _draft_approved(w) -> bool:
    return Script.objects.filter(pk=w.ids["script_draft"], approval_status="approved").exists()


def _policy_approved(w) -> bool:
    return SessionPolicy.objects.filter(pk=w.ids["session_policy"], approval_status="approved").exists()


ROWS = [
    page(
        "GET",
        "/admin/approvals/",
        only(STAFF, 200, 302),
        shows=(
            ("job_waiting", callers(STAFF, "in")),
            ("script_draft", callers(STAFF)),
            ("session_policy", callers(STAFF, "in")),
        ),
    ),
    page(
        "POST",
        "/admin/approvals/",
        302,
        body={"kind": "script", "id": "{job_waiting}", "decision": "approve"},
        hidden=("job_waiting",),
        effect=(_job_decided, callers(APPROVE, "in")),
        label="job",
    ),
    page(
        "POST",
        "/admin/approvals/",
        302,
        body={"kind": "script_version", "id": "{script_draft}", "decision": "approve"},
        effect=(_draft_approved, callers(APPROVE)),
        label="script version",
    ),
    page(
        "POST",
        "/admin/approvals/",
        302,
        body={"kind": "session_policy", "id": "{session_policy}", "decision": "approve"},
        hidden=("session_policy",),
        effect=(_policy_approved, callers(APPROVE, "in")),
        label="session policy",
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_matrix(row: Row, matrix: World):
    check(row, matrix)
