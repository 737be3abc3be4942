"""Law 7, the one approval queue in the admin (jobs and script versions), for every role, in-site and
out-of-site (harness: tests/support/authorization.py)."""

from __future__ import annotations

import pytest

from scripting.models import Script, ScriptJob
from tests.support.authorization import APPROVE, STAFF, Row, World, callers, check, ids, only, page


def _job_decided(w) -> bool:
    return ScriptJob.objects.filter(pk=w.ids["job_waiting"], status="queued").exists()


def _draft_approved(w) -> bool:
    return Script.objects.filter(pk=w.ids["script_draft"], approval_status="approved").exists()


ROWS = [
    page(
        "GET",
        "/admin/approvals/",
        only(STAFF, 200, 302),
        shows=(("job_waiting", callers(STAFF, "in")), ("script_draft", callers(STAFF))),
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
]


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_matrix(row: Row, matrix: World):
    check(row, matrix)
