"""Law 7, access: API tokens and a site's grants, for every role, in-site and out-of-site; the table's
role groups held to rmm/access.py (harness: tests/support/authorization.py)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from rmm.access import roles as access
from tests.support.authorization import (
    APPROVE,
    AUTHOR_SCRIPTS,
    ENGAGE_KILL_SWITCH,
    EXPORT_EVIDENCE,
    IMPORT_ADVISORIES,
    MANAGE_ACCESS,
    MANAGE_AGENTS,
    MANAGE_AUTHORITY,
    MANAGE_INTEGRATIONS,
    MANAGE_LEGAL_HOLDS,
    OPEN_SESSIONS,
    REPORT_FINDINGS,
    REQUEST_CONTAINMENT,
    REQUEST_JOBS,
    ROLES,
    STAFF,
    Row,
    World,
    api,
    callers,
    check,
    ids,
    only,
    page,
)


def _granted(w) -> bool:
    return access.may_see_site(get_user_model().objects.get(username="technician-out"), w.ids["site"])


ROWS = [
    # --- API tokens: each caller sees and revokes its own; a third party's is not there for it (the
    # world's admins hold one site each: every token is an admin's over every site only)
    api("GET", "/api/v1/tokens/", 200, shows=(("token_other", frozenset()),)),
    api("GET", "/api/v1/tokens/{token_other}/", 404),
    api("POST", "/api/v1/tokens/{token_other}/revoke/", 404, body={"reason": "matrix"}),
    # A site's grants: staff of the site may look, only an admin may change them.
    page("GET", "/admin/inventory/site/{site}/access/", only(STAFF, 200, 302), only(STAFF, 404, 302), hidden=("site",)),
    page(
        "POST",
        "/admin/inventory/site/{site}/access/",
        {"admin": 302, "approver": 403, "*": 302},
        only(STAFF, 404, 302),
        body={"username": "technician-out", "action": "grant"},
        hidden=("site",),
        effect=(_granted, callers(MANAGE_ACCESS, "in")),
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_matrix(row: Row, matrix: World):
    check(row, matrix)


def test_role_groups_match_access():
    """The table's role groups are rmm/access.py's capabilities; change one, change the table."""
    assert set(access.ROLES) == set(ROLES)
    written = {
        "approve": APPROVE,
        "manage_authority": MANAGE_AUTHORITY,
        "author_scripts": AUTHOR_SCRIPTS,
        "request_jobs": REQUEST_JOBS,
        "export_evidence": EXPORT_EVIDENCE,
        "manage_legal_holds": MANAGE_LEGAL_HOLDS,
        "manage_agents": MANAGE_AGENTS,
        "engage_kill_switch": ENGAGE_KILL_SWITCH,
        "import_advisories": IMPORT_ADVISORIES,
        "manage_access": MANAGE_ACCESS,
        "manage_integrations": MANAGE_INTEGRATIONS,
        "request_containment": REQUEST_CONTAINMENT,
        "open_sessions": OPEN_SESSIONS,
        "report_findings": REPORT_FINDINGS,
        "view": ROLES,
        "view_evidence": ROLES,
    }
    assert {cap: frozenset(roles) for cap, roles in written.items()} == access.CAPABILITIES
