"""Law 7, inventory's routes: sites, assets, agents, for every role, in-site and out-of-site
(harness: tests/support/authorization.py)."""

from __future__ import annotations

import pytest

from rmm.inventory.models import Asset
from tests.support.authorization import IN, MANAGE_AGENTS, Row, World, api, callers, check, ids, only


def _retired(w) -> bool:
    return Asset.objects.filter(pk=w.ids["asset"], retired_at__isnull=False).exists()


ROWS = [
    # --- inventory
    api("GET", "/api/v1/sites/", 200, shows=(("site", IN),)),
    api("GET", "/api/v1/sites/{site}/", 200, 404, hidden=("site",)),
    api("GET", "/api/v1/assets/", 200, shows=(("asset", IN),)),
    api("GET", "/api/v1/assets/?retired=true", 200, shows=(("asset", frozenset()),), label="retired"),
    api("GET", "/api/v1/assets/{asset}/", 200, 404, hidden=("asset",)),
    api(
        "POST",
        "/api/v1/assets/{asset}/retire/",
        only(MANAGE_AGENTS, 200, 403),
        404,
        body={"reason": "sold"},
        hidden=("asset",),
        effect=(_retired, callers(MANAGE_AGENTS, "in")),
    ),
    api("GET", "/api/v1/agents/", 200, shows=(("agent", IN),)),
    api("GET", "/api/v1/agents/{agent}/", 200, 404, hidden=("agent",)),
    api(
        "POST",
        "/api/v1/agents/{agent}/revoke/",
        only(MANAGE_AGENTS, 200, 403),
        404,
        body={"reason": "laptop lost"},
        hidden=("agent",),
    ),
    api("POST", "/api/v1/agents/{agent}/rotate/", only(MANAGE_AGENTS, 200, 403), 404, hidden=("agent",)),
]


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_matrix(row: Row, matrix: World):
    check(row, matrix)
