"""Law 7, the deployment app's routes: software packages (global artefacts, like scripts), for
every role, in-site and out-of-site (harness: tests/support/authorization.py)."""

from __future__ import annotations

import pytest

from tests.support.authorization import (
    APPROVE,
    AUTHOR_SCRIPTS,
    EVERYONE,
    REQUEST_JOBS,
    STAFF,
    Row,
    World,
    api,
    check,
    ids,
    only,
    page,
)

BY_URI = {"name": "new", "version": "1", "installer_type": "deb", "installer_uri": "http://example.invalid/x.deb"}

ROWS = [
    api("GET", "/api/v1/packages/", 200, shows=(("package_pending", EVERYONE),)),
    api("GET", "/api/v1/packages/{package_pending}/", 200),
    # Every package is privileged (an installer runs as root): the matrix's approvers lack the permission.
    api("POST", "/api/v1/packages/{package_pending}/approve/", 403, label="needs approve_privileged"),
    api("POST", "/api/v1/packages/{package_pending}/reject/", only(APPROVE, 200, 403), body={"reason": "no"}),
    api(
        "POST",
        "/api/v1/packages/",
        only(AUTHOR_SCRIPTS, 400, 403),
        body={**BY_URI, "hash": "0" * 64, "size": 1},
        label="http to a remote address",
    ),
    # --- deployments: jobs of a site, like script jobs
    api(
        "POST",
        "/api/v1/deployments/",
        only(REQUEST_JOBS, 400, 403),
        only(REQUEST_JOBS, 404, 403),  # another site's asset is one that does not exist
        body={"package": "{package_pending}", "assets": ["{asset}"], "psa_task_id": "{task}"},
        hidden=("asset", "task"),
        label="package not approved",
    ),
    api("GET", "/api/v1/deployment-jobs/", 200),
    api("GET", "/api/v1/deployment-jobs/{new_id}/", 404, label="no such job"),
    # --- an asset's installed software: its site's callers only; others cannot tell it from a missing asset
    api("GET", "/api/v1/assets/{asset}/software/", 200, 404, hidden=("asset",)),
    page("GET", "/admin/deployment/softwarepackage/", only(STAFF, 200, 302)),
    page("GET", "/admin/deployment/softwarepackage/{package_pending}/change/", only(STAFF, 200, 302)),
]


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_matrix(row: Row, matrix: World):
    check(row, matrix)
