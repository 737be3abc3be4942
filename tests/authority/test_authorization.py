"""Law 7, authority's routes: the PSA's cases and tasks, for every role, in-site and out-of-site
(harness: tests/support/authorization.py)."""

from __future__ import annotations

import pytest

from rmm.authority.models import PsaCase
from tests.support.authorization import IN, MANAGE_AUTHORITY, Row, World, api, callers, check, ids, only, page

AUTHORITY_CASE = {"title": "Patch Tuesday", "status": "approved", "site": "alpha"}
AUTHORITY_TASK = {"case": "{case}", "title": "Run fix", "status": "approved"}
LOCAL = {"site": "alpha", "case_title": "Local matrix", "task_title": "Local task"}


def _local_case(w) -> bool:
    return PsaCase.objects.filter(title="Local matrix", tasks__title="Local task").exists()


ROWS = [
    # --- authority. A PUT names the PSA's own id: upserting an id that exists in a site the caller
    # may not use must fail (it cannot be created again), so those rows are not `hidden`.
    api("GET", "/api/v1/psa/cases/{case}/", 200, 404, hidden=("case",)),
    api(
        "PUT",
        "/api/v1/psa/cases/{case}/",
        only(MANAGE_AUTHORITY, 200, 403),
        only(MANAGE_AUTHORITY, 400, 403),
        body=AUTHORITY_CASE,
        label="existing",
    ),
    # Upserting alpha's case into beta: beta's callers learn only that the id is taken.
    api(
        "PUT",
        "/api/v1/psa/cases/{case}/",
        only(MANAGE_AUTHORITY, 400, 403),
        body={**AUTHORITY_CASE, "site": "beta"},
        label="into beta",
    ),
    api(
        "PUT",
        "/api/v1/psa/cases/{new_id}/",
        only(MANAGE_AUTHORITY, 201, 403),
        only(MANAGE_AUTHORITY, 400, 403),
        body=AUTHORITY_CASE,
        label="new",
    ),
    api("GET", "/api/v1/psa/tasks/{task}/", 200, 404, hidden=("task",)),
    api(
        "PUT",
        "/api/v1/psa/tasks/{task}/",
        only(MANAGE_AUTHORITY, 200, 403),
        only(MANAGE_AUTHORITY, 400, 403),
        body=AUTHORITY_TASK,
        hidden=("case",),
        label="existing",
    ),
    api(
        "PUT",
        "/api/v1/psa/tasks/{new_id}/",
        only(MANAGE_AUTHORITY, 201, 403),
        only(MANAGE_AUTHORITY, 400, 403),
        body=AUTHORITY_TASK,
        hidden=("case",),
        label="new",
    ),
    # --- the console: cases read-only; local authority (no PSA) by the psa role alone
    page("GET", "/console/authority/cases/", 200, shows=(("case", IN),)),
    page("GET", "/console/authority/cases/{case}/", 200, 404, hidden=("case",)),
    page("GET", "/console/authority/local/", only(("psa",), 200, 403)),
    page(
        "POST",
        "/console/authority/local/",
        only(("psa",), 302, 403),
        only(("psa",), 400, 403),
        body=LOCAL,
        effect=(_local_case, callers(("psa",), "in")),
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_matrix(row: Row, matrix: World):
    check(row, matrix)
