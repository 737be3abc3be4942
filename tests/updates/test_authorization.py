"""Law 7, the agent update routes: creating update jobs (a role that may request jobs, judged on
the release named: none is published in the matrix's world) and the release download (an agent
credential only), for every role, in-site and out-of-site (harness: tests/support/authorization.py)."""

from __future__ import annotations

import pytest

from tests.support.authorization import REQUEST_JOBS, Row, World, api, check, ids, only

ROWS = [
    api(
        "POST",
        "/api/v1/agent-updates/",
        only(REQUEST_JOBS, 400, 403),
        body={"version": "9.9.9", "asset_id": "{asset}", "psa_task_id": "{task}"},
    ),
    # a role's token is no agent credential
    api("GET", "/api/v1/agent/releases/" + "0" * 64 + "/", 401),
]


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_matrix(row: Row, matrix: World):
    check(row, matrix)
