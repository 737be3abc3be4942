"""Reading the catalog (searched by CVE, vendor, product and severity) and an asset's patches, per
site: an asset of another site answers 404 as one that does not exist, and the attempt is recorded."""

from __future__ import annotations

import uuid

import pytest
from django.test import Client
from django.utils import timezone

from patching import services
from patching.models import AssetPatch, PatchCatalog
from rmm.history.models import HistoryEvent
from tests.helpers import make_agent, otp_login
from tests.patching import documents

CATALOG = "/api/v1/patch-catalog/"


@pytest.fixture
def imported(db):
    services.import_csaf("cli:import_advisories", documents.redhat())
    services.import_csaf("cli:import_advisories", documents.siemens())


def products(r) -> list[str]:
    assert r.status_code == 200, r.content
    return [f"{row['product']} {row['patch_id']}" for row in r.json()["results"]]


RHEL = ["openssl 1:3.0.7-27.el9", "openssl-libs 1:3.0.7-27.el9"]
SIEMENS = ["SIMATIC S7-1200 CPU family SSA-711309", "SIMATIC S7-1500 CPU family V3.1.0"]


@pytest.mark.parametrize(
    "query,expected",
    [
        ({}, RHEL + SIEMENS),
        ({"cve": "CVE-2024-0727"}, ["openssl-libs 1:3.0.7-27.el9"]),
        ({"cve": "cve-2023-5678"}, RHEL),
        ({"cve": "CVE-1999-0001"}, []),
        ({"vendor": "siemens"}, SIEMENS),
        ({"product": "OpenSSL"}, ["openssl 1:3.0.7-27.el9"]),
        ({"min_severity": "high"}, ["openssl-libs 1:3.0.7-27.el9", "SIMATIC S7-1500 CPU family V3.1.0"]),
        ({"min_severity": "medium", "vendor": "rhel"}, RHEL),
        ({"min_severity": "critical"}, []),
    ],
)
def test_the_catalog_is_searched_by_cve_vendor_product_and_severity(caller, imported, query, expected):
    found = products(caller("tech", "technician").get(CATALOG, query))
    # ordered by vendor (rhel and Siemens: in the database's collation), product, patch id
    assert sorted(found) == sorted(expected)
    for vendor in (RHEL, SIEMENS):
        assert [row for row in found if row in vendor] == [row for row in expected if row in vendor]


def test_an_entry_shows_its_fix_and_cves(caller, imported):
    entry = PatchCatalog.objects.get(product="openssl-libs")
    r = caller("tech", "technician").get(f"{CATALOG}{entry.pk}/")
    assert r.status_code == 200
    assert r.json() == {
        "id": str(entry.pk),
        "vendor": "rhel",
        "product": "openssl-libs",
        "patch_id": "1:3.0.7-27.el9",
        "severity": "high",
        "release_date": "2024-04-30T09:00:00Z",
        "fixed_version": "1:3.0.7-27.el9",
        "cves": ["CVE-2023-5678", "CVE-2024-0727"],
        "title": "Red Hat Security Advisory: openssl security update",
        "url": "https://access.redhat.com/errata/RHSA-2024:2447",
        "source": "csaf",
        "source_advisory_id": "RHSA-2024:2447",
        "imported_at": r.json()["imported_at"],
    }


@pytest.mark.parametrize("query,field", [({"min_severity": "urgent"}, "min_severity"), ({"source": "rss"}, "source")])
def test_a_bad_filter_is_refused_naming_it(caller, imported, query, field):
    r = caller("tech", "technician").get(CATALOG, query)
    assert r.status_code == 400
    assert list(r.json()) == [field]


def found_missing(asset_id, entry, *, status="missing", installed_at=None) -> AssetPatch:
    """What a scan will record (issue 16's next part writes it through its intake); until then the
    test writes the row a scan would."""
    return AssetPatch.objects.create(
        asset_id=asset_id, patch=entry, status=status, detected_at=timezone.now(), installed_at=installed_at
    )


@pytest.fixture
def patched(imported, site, other_site):
    agent, _ = make_agent(site, "web-01")
    other, _ = make_agent(other_site, "db-01")
    libs = PatchCatalog.objects.get(product="openssl-libs")
    found_missing(agent.asset_id, libs)
    found_missing(
        agent.asset_id, PatchCatalog.objects.get(product="openssl"), status="installed", installed_at=timezone.now()
    )
    found_missing(other.asset_id, libs)
    return agent.asset_id, other.asset_id


def test_an_asset_s_patches_show_each_patch_and_its_state(caller, site, patched):
    asset, _ = patched
    r = caller("tech", "technician", sites=[site]).get(f"/api/v1/assets/{asset}/patches/")
    assert r.status_code == 200
    rows = r.json()["results"]
    assert r.json()["count"] == 2
    assert [(row["patch"]["product"], row["status"], row["installed_at"] is not None) for row in rows] == [
        ("openssl-libs", "missing", False),
        ("openssl", "installed", True),
    ]
    assert set(rows[0]) == {"id", "patch", "status", "detected_at", "installed_at"}
    assert rows[0]["patch"] == {
        "id": str(PatchCatalog.objects.get(product="openssl-libs").pk),
        "vendor": "rhel",
        "product": "openssl-libs",
        "patch_id": "1:3.0.7-27.el9",
        "severity": "high",
        "release_date": "2024-04-30T09:00:00Z",
    }
    missing = caller("tech", "technician").get(f"/api/v1/assets/{asset}/patches/", {"status": "missing"})
    assert [row["patch"]["product"] for row in missing.json()["results"]] == ["openssl-libs"]
    high = caller("tech", "technician").get(f"/api/v1/assets/{asset}/patches/", {"min_severity": "high"})
    assert [row["patch"]["product"] for row in high.json()["results"]] == ["openssl-libs"]
    bad = caller("tech", "technician").get(f"/api/v1/assets/{asset}/patches/", {"status": "lost"})
    assert bad.status_code == 400 and list(bad.json()) == ["status"]


def test_an_asset_of_another_site_answers_404_like_a_missing_one_and_is_recorded(caller, site, patched):
    _, other = patched
    tech = caller("tech", "technician", sites=[site])
    outside = tech.get(f"/api/v1/assets/{other}/patches/")
    nowhere = tech.get(f"/api/v1/assets/{uuid.uuid4()}/patches/")
    assert outside.status_code == nowhere.status_code == 404
    assert outside.json() == nowhere.json() == {"detail": "Not found."}
    (refusal,) = HistoryEvent.objects.filter(action="refused.access")
    assert refusal.payload["object"] == f"inventory.asset:{other}"
    assert refusal.payload["path"] == f"/api/v1/assets/{other}/patches/"


def test_the_admin_finds_an_entry_by_cve(caller, imported):
    root = caller("root", "admin").user
    browser = Client()
    otp_login(browser, root)
    r = browser.get("/admin/patching/patchcatalog/", {"q": "CVE-2024-0727"})
    assert r.status_code == 200
    assert "openssl-libs" in r.text and "SIMATIC" not in r.text
    entry = PatchCatalog.objects.get(product="openssl-libs")
    page = browser.get(f"/admin/patching/patchcatalog/{entry.pk}/change/")
    assert "CVE-2023-5678, CVE-2024-0727" in page.text


# A fixed id: test ids must be the same in every xdist worker.
NOWHERE = "0b6f3c1e-0000-4000-8000-000000000404"


@pytest.mark.parametrize(
    "path",
    [
        f"{CATALOG}{NOWHERE}/",
        f"{CATALOG}not-a-uuid/",
        f"/api/v1/assets/{NOWHERE}/patches/",
        "/api/v1/assets/not-a-uuid/patches/",
    ],
)
def test_unknown_or_malformed_ids_are_404(caller, imported, path):
    r = caller("tech", "technician").get(path)
    assert r.status_code == 404
    assert r.json() == {"detail": "Not found."}
