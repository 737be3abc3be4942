"""Law 7, the profiles app's routes: config keys (global artefacts) and profiles (global desired
state), for every role, in-site and out-of-site (harness: tests/support/authorization.py)."""

from __future__ import annotations

import pytest

from tests.support.authorization import (
    APPROVE,
    AUTHOR_SCRIPTS,
    EVERYONE,
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

ITEM = {"config_key": "matrix.line", "parameters": {"path": "/etc/x", "key": "K"}, "comparison": "equals"}

ROWS = [
    # --- config keys: every version, the same for every site
    api("GET", "/api/v1/config-keys/", 200, shows=(("config_key_pending", EVERYONE),)),
    api("GET", "/api/v1/config-keys/{config_key}/", 200),
    api("POST", "/api/v1/config-keys/{config_key_pending}/approve/", only(APPROVE, 200, 403)),
    api("POST", "/api/v1/config-keys/{config_key}/approve/", only(APPROVE, 409, 403), label="already approved"),
    api("POST", "/api/v1/config-keys/{config_key_pending}/reject/", only(APPROVE, 200, 403), body={"reason": "no"}),
    # --- profiles: desired state, the same for every site (assignments will be per site)
    api("GET", "/api/v1/profiles/", 200, shows=(("profile", EVERYONE),)),
    api("GET", "/api/v1/profiles/{profile}/", 200),
    api(
        "POST",
        "/api/v1/profiles/",
        only(AUTHOR_SCRIPTS, 201, 403),
        body={"name": "new", "profile_type": "baseline", "items": [ITEM]},
    ),
    api(
        "POST",
        "/api/v1/profiles/",
        only(AUTHOR_SCRIPTS, 400, 403),
        body={"name": "new", "profile_type": "baseline", "items": [{**ITEM, "config_key": "matrix.pending"}]},
        label="key not approved",
    ),
    api("POST", "/api/v1/profiles/{profile}/revisions/", only(AUTHOR_SCRIPTS, 201, 403), body={"items": [ITEM]}),
    # --- admin (read-only)
    page("GET", "/admin/profiles/configkey/", only(STAFF, 200, 302), shows=(("config_key_pending", callers(STAFF)),)),
    page("GET", "/admin/profiles/configurationprofile/{profile}/change/", only(STAFF, 200, 302)),
]


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_matrix(row: Row, matrix: World):
    check(row, matrix)
