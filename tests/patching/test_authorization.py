"""Law 7, the patching app's routes: the catalog (global: read by every role, imported into by
admins and the scanner) and an asset's patches (per site), for every role, in-site and out-of-site
(harness: tests/support/authorization.py)."""

from __future__ import annotations

import pytest
from django.utils import timezone

from patching import services
from patching.models import AssetPatch, PatchCatalog
from tests.patching import documents
from tests.support.authorization import (
    EVERYONE,
    IMPORT_ADVISORIES,
    IN,
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

SPOILED = documents.siemens()
SPOILED["vulnerabilities"][0]["product_status"]["fixed"].append("CSAFPID-NOPE")

ROWS = [
    # --- the catalog: the same for every site
    api("GET", "/api/v1/patch-catalog/", 200, shows=(("patch", EVERYONE),)),
    api("GET", "/api/v1/patch-catalog/{patch}/", 200),
    api("POST", "/api/v1/patch-catalog/import/", only(IMPORT_ADVISORIES, 201, 403), body=documents.redhat()),
    api(
        "POST",
        "/api/v1/patch-catalog/import/",
        only(IMPORT_ADVISORIES, 400, 403),
        body=SPOILED,
        label="malformed",
    ),
    # --- an asset's patches: its site's callers only; others cannot tell it from a missing asset
    api("GET", "/api/v1/assets/{asset}/patches/", 200, 404, shows=(("asset_patch", IN),), hidden=("asset",)),
    # --- admin (read-only)
    page("GET", "/admin/patching/patchcatalog/", only(STAFF, 200, 302), shows=(("patch", callers(STAFF)),)),
    page("GET", "/admin/patching/patchcatalog/{patch}/change/", only(STAFF, 200, 302)),
]


@pytest.fixture(scope="module")
def patch_world(matrix_world, django_db_blocker):
    """The matrix's world with an imported advisory and a patch missing on ``asset`` (alpha)."""
    with django_db_blocker.unblock():
        services.import_csaf("cli:import_advisories", documents.siemens())
        entry = PatchCatalog.objects.get(patch_id="V3.1.0")
        # The row a scan will write (issue 16's next part); until then, written as the scan would.
        found = AssetPatch.objects.create(
            asset_id=matrix_world.ids["asset"], patch=entry, status="missing", detected_at=timezone.now()
        )
    matrix_world.ids.update(patch=str(entry.pk), asset_patch=str(found.pk))
    return matrix_world


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_matrix(row: Row, patch_world: World, matrix: World):
    check(row, matrix)
