"""Law 7, webhook subscriptions: only admins, and only those of the webhook's sites, for every role
in-site and out-of-site (harness: tests/support/authorization.py). The world's webhook hears alpha;
its one delivery (a ping) is still pending, so a replay is a state conflict."""

from __future__ import annotations

import pytest

from tests.support.authorization import MANAGE_INTEGRATIONS, Row, World, api, callers, check, ids, only

HOOK = "/api/v1/webhooks/{webhook}/"
NEW = {"url": "http://127.0.0.1:9/new", "event_types": ["job.finished"], "sites": ["alpha"]}
MANAGERS_IN = callers(MANAGE_INTEGRATIONS, "in")


def mine(status: int) -> dict:
    return only(MANAGE_INTEGRATIONS, status, 403)


ROWS = [
    api("GET", "/api/v1/webhooks/", mine(200), shows=(("webhook", MANAGERS_IN),)),
    api("POST", "/api/v1/webhooks/", mine(201), mine(400), body=NEW),
    api("GET", HOOK, mine(200), mine(404), hidden=("webhook",)),
    api("PATCH", HOOK, mine(200), mine(404), body={"event_types": ["job.finished"]}, hidden=("webhook",)),
    api("DELETE", HOOK, mine(204), mine(404), hidden=("webhook",)),
    api("POST", HOOK + "ping/", mine(202), mine(404), hidden=("webhook",)),
    api("POST", HOOK + "rotate-secret/", mine(200), mine(404), body={"overlap_hours": 1}, hidden=("webhook",)),
    api("GET", HOOK + "deliveries/", mine(200), mine(404), hidden=("webhook",)),
    api(
        "POST",
        "/api/v1/webhook-deliveries/{webhook_delivery}/replay/",
        mine(409),
        mine(404),
        hidden=("webhook_delivery",),
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_matrix(row: Row, matrix: World):
    check(row, matrix)
