"""Law 7, the project's own routes (API root, schema, docs, the admin's index), and the completeness
check over every app's table: a route that no ``tests/<app>/test_authorization.py`` covers fails here.
The harness: tests/support/authorization.py."""

from __future__ import annotations

import pytest
from django.urls import get_resolver

from tests.support.authorization import STAFF, Row, World, api, check, every_row, ids, only, page, uncovered

ROWS = [
    # --- plumbing: API root, schema, docs
    api("GET", "/api/v1/", 200),
    api("GET", "/api/schema/", 200),
    api("GET", "/api/docs/", 200, anon=302),  # a browser without a session is sent to sign in
    # --- admin: staff only (everyone else is sent to the admin's sign-in page)
    page("GET", "/admin/", only(STAFF, 200, 302)),
]


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_matrix(row: Row, matrix: World):
    check(row, matrix)


def test_every_route_has_a_row():
    """A new endpoint or page without a row in any app's ``ROWS`` fails here, with its path.

    Format-suffix twins (``….json``) are skipped: the router makes one for every route, served by
    the same view with the same checks (one row shows it: tests/scripting). The DRF API root has its row."""
    missing = uncovered(get_resolver().url_patterns, every_row())
    assert not missing, "routes without a row in the authorization matrix:\n" + "\n".join(missing)


def test_the_guard_names_what_it_misses():
    from django.urls import path
    from rest_framework.decorators import api_view

    @api_view(["GET", "POST"])
    def gadget(request):
        raise AssertionError("never called")

    extra = [path("api/v1/gadgets/", gadget), path("console/gadgets/", lambda request: None)]
    without_post = [row for row in every_row() if row.id != "POST /api/v1/scripts/"]
    assert uncovered(get_resolver().url_patterns + extra, without_post) == [
        "/api/v1/gadgets/ (no row)",
        "/api/v1/scripts/$ ['POST']",
        "/console/gadgets/ (no row)",
    ]
