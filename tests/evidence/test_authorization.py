"""Law 7, evidence's routes: evidence, its signing key, exports, legal holds, a PSA case's evidence and
the exports page, for every role, in-site and out-of-site (harness: tests/support/authorization.py)."""

from __future__ import annotations

import pytest

from evidence.models import EvidenceExport
from tests.support.authorization import (
    EXPORT_EVIDENCE,
    IN,
    MANAGE_LEGAL_HOLDS,
    Row,
    World,
    api,
    callers,
    check,
    ids,
    only,
    page,
)


def _new_export(w) -> bool:
    return EvidenceExport.objects.exclude(pk=w.ids["export"]).exists()


ROWS = [
    # --- the signing key
    api("GET", "/api/v1/evidence/signing-key/", 200),
    # --- a PSA case's evidence
    api("GET", "/api/v1/psa/cases/{case}/evidence/", 200, 404, shows=(("evidence", IN),), hidden=("case",)),
    # --- evidence
    api("GET", "/api/v1/evidence/", 200, shows=(("evidence", IN),)),
    api("GET", "/api/v1/evidence/?asset={asset}", 200, shows=(("evidence", IN),), hidden=("asset",)),
    api("GET", "/api/v1/evidence/?psa_case={case}", 200, shows=(("evidence", IN),), hidden=("case",)),
    api("GET", "/api/v1/evidence/?psa_task={task}", 200, shows=(("evidence", IN),), hidden=("task",)),
    api("GET", "/api/v1/evidence/{evidence}/", 200, 404, hidden=("evidence",)),
    api("GET", "/api/v1/evidence/{evidence}/content/", 200, 404, hidden=("evidence",)),
    # An export is its requester's alone (here compliance:in's), whoever else may see its site.
    api("GET", "/api/v1/evidence/exports/", 200, shows=(("export", frozenset({"compliance:in"})),)),
    api("GET", "/api/v1/evidence/exports/{export}/", only(("compliance",), 200, 404), 404, hidden=("export",)),
    api(
        "GET",
        "/api/v1/evidence/exports/{export}/download/",
        only(("compliance",), 200, 404),
        404,
        hidden=("export",),
    ),
    api(
        "POST",
        "/api/v1/evidence/exports/",
        only(EXPORT_EVIDENCE, 202, 403),
        only(EXPORT_EVIDENCE, 400, 403),
        body={"site": "alpha"},
    ),
    api(
        "POST",
        "/api/v1/evidence/exports/",
        only(EXPORT_EVIDENCE, 202, 403),
        only(EXPORT_EVIDENCE, 400, 403),
        body={"assets": ["{asset}"]},
        hidden=("asset",),
        label="by asset",
    ),
    api("GET", "/api/v1/evidence/legal-holds/", 200, shows=(("hold", IN),)),
    api("GET", "/api/v1/evidence/legal-holds/{hold}/", 200, 404, hidden=("hold",)),
    api(
        "POST",
        "/api/v1/evidence/legal-holds/",
        only(MANAGE_LEGAL_HOLDS, 201, 403),
        only(MANAGE_LEGAL_HOLDS, 400, 403),
        body={"site": "alpha", "reason": "litigation"},
    ),
    api(
        "POST",
        "/api/v1/evidence/legal-holds/",
        only(MANAGE_LEGAL_HOLDS, 201, 403),
        only(MANAGE_LEGAL_HOLDS, 400, 403),
        body={"psa_case": "{case}", "reason": "litigation"},
        hidden=("case",),
        label="by PSA case",
    ),
    api(
        "POST",
        "/api/v1/evidence/legal-holds/{hold}/release/",
        only(MANAGE_LEGAL_HOLDS, 200, 403),
        404,
        body={"reason": "settled"},
        hidden=("hold",),
    ),
    # --- the exports page
    page("GET", "/console/evidence/exports/", 200, shows=(("export", frozenset({"compliance:in"})),)),
    page(
        "POST",
        "/console/evidence/exports/",
        only(EXPORT_EVIDENCE, 302, 200),
        200,
        body={"site": "alpha"},
        effect=(_new_export, callers(EXPORT_EVIDENCE, "in")),
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_matrix(row: Row, matrix: World):
    check(row, matrix)
