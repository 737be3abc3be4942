"""Law 7, SIEM destinations: only admins, and only those of the destination's sites, for every role
in-site and out-of-site (harness: tests/support/authorization.py). The world's destination hears
alpha."""

from __future__ import annotations

import pytest

from tests.support.authorization import MANAGE_INTEGRATIONS, Row, World, api, callers, check, ids, only

ONE = "/api/v1/siem-destinations/{siem_destination}/"
NEW = {"kind": "syslog", "address": "127.0.0.1:9", "format": "cef", "sites": ["alpha"]}
MANAGERS_IN = callers(MANAGE_INTEGRATIONS, "in")


def mine(status: int) -> dict:
    return only(MANAGE_INTEGRATIONS, status, 403)


ROWS = [
    api("GET", "/api/v1/siem-destinations/", mine(200), shows=(("siem_destination", MANAGERS_IN),)),
    api("POST", "/api/v1/siem-destinations/", mine(201), mine(400), body=NEW),
    api("GET", ONE, mine(200), mine(404), hidden=("siem_destination",)),
    api("PATCH", ONE, mine(200), mine(404), body={"enabled": False}, hidden=("siem_destination",)),
    api("DELETE", ONE, mine(204), mine(404), hidden=("siem_destination",)),
]


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_matrix(row: Row, matrix: World):
    check(row, matrix)
