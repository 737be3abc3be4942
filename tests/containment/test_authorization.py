"""Law 7, the containment app's routes: only the edr role (and admin) may ask, within its sites; an
asset of another site answers as a missing one (harness: tests/support/authorization.py)."""

from __future__ import annotations

import pytest

from tests.support.authorization import REQUEST_CONTAINMENT, Row, World, api, check, ids, only

ROWS = [
    api("GET", "/api/v1/containment/", 200),
    api("GET", "/api/v1/containment/{new_id}/", 404, label="no such job"),
    api(
        "POST",
        "/api/v1/containment/",
        only(REQUEST_CONTAINMENT, 409, 403),
        only(REQUEST_CONTAINMENT, 404, 403),
        body={"asset": "{asset}", "action": "release", "reason": "EDR alert", "psa_task_id": "{task}"},
        hidden=("asset",),
        label="release without an isolation",
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_matrix(row: Row, matrix: World):
    check(row, matrix)
