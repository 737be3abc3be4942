"""CSAF 2.0 advisories into the patch catalog, through the API and the command: what each document
becomes, importing again (never a duplicate), and every malformed document refused at its JSON path
with nothing written."""

from __future__ import annotations

import copy
import json

import pytest
from django.core.management import CommandError, call_command

from patching.models import PatchCatalog, PatchCve
from rmm.history.models import HistoryEvent
from tests.patching import documents

IMPORT = "/api/v1/patch-catalog/import/"


@pytest.fixture
def admin(caller):
    return caller("root", "admin")


def catalog() -> dict[tuple[str, str, str], dict]:
    """The whole catalog as a user reads it back through the API's fields."""
    return {
        (row.vendor, row.product, row.patch_id): {
            "fixed_version": row.fixed_version,
            "severity": row.severity,
            "cves": sorted(row.cves.values_list("cve", flat=True)),
            "url": row.url,
            "advisory": row.source_advisory_id,
            "released": row.release_date.isoformat() if row.release_date else None,
        }
        for row in PatchCatalog.objects.all()
    }


def imports() -> list[dict]:
    return list(HistoryEvent.objects.filter(action="patch_catalog.imported").values_list("payload", flat=True))


def test_a_red_hat_advisory_becomes_one_entry_per_fixed_package(admin):
    r = admin.post(IMPORT, documents.redhat(), format="json")
    assert r.status_code == 201, r.content
    assert r.json() == {"source": "csaf", "imported": 2, "created": 2, "updated": 0, "unchanged": 0}
    errata = "https://access.redhat.com/errata/RHSA-2024:2447"
    # openssl on two architectures is one fix; openssl-libs fixes both CVEs, the higher severity wins
    assert catalog() == {
        ("rhel", "openssl", "1:3.0.7-27.el9"): {
            "fixed_version": "1:3.0.7-27.el9",
            "severity": 2,
            "cves": ["CVE-2023-5678"],
            "url": errata,
            "advisory": "RHSA-2024:2447",
            "released": "2024-04-30T09:00:00+00:00",
        },
        ("rhel", "openssl-libs", "1:3.0.7-27.el9"): {
            "fixed_version": "1:3.0.7-27.el9",
            "severity": 3,
            "cves": ["CVE-2023-5678", "CVE-2024-0727"],
            "url": errata,
            "advisory": "RHSA-2024:2447",
            "released": "2024-04-30T09:00:00+00:00",
        },
    }
    (event,) = HistoryEvent.objects.filter(action="patch_catalog.imported")
    assert event.actor == "user:root"
    assert event.payload == {
        "api_token": str(admin.user.api_tokens.get().pk),  # the token it called with
        "source": "csaf",
        "advisory": "RHSA-2024:2447",
        "advisory_version": "1",
        "imported": 2,
        "created": 2,
        "updated": 0,
        "unchanged": 0,
    }


def test_a_siemens_advisory_maps_version_ranges_vendor_fixes_and_aggregate_severity(admin):
    r = admin.post(IMPORT, documents.siemens(), format="json")
    assert r.status_code == 201, r.content
    fix = "https://support.industry.siemens.com/cs/ww/en/view/109478459/"
    assert catalog() == {
        # the fixed version, scored through the affected range's score, with the range's vendor fix
        ("Siemens", "SIMATIC S7-1500 CPU family", "V3.1.0"): {
            "fixed_version": "V3.1.0",
            "severity": 3,
            "cves": ["CVE-2023-44374"],
            "url": fix,
            "advisory": "SSA-711309",
            "released": "2024-02-13T00:00:00+00:00",
        },
        # a vendor fix without a fixed version: the advisory is the patch; no score: the aggregate
        ("Siemens", "SIMATIC S7-1200 CPU family", "SSA-711309"): {
            "fixed_version": "",
            "severity": 2,
            "cves": ["CVE-2023-44375"],
            "url": fix,
            "advisory": "SSA-711309",
            "released": "2024-02-13T00:00:00+00:00",
        },
    }


def test_importing_again_updates_and_never_duplicates(admin):
    assert admin.post(IMPORT, documents.redhat(), format="json").status_code == 201
    first = catalog()
    ids = set(PatchCatalog.objects.values_list("pk", flat=True))

    r = admin.post(IMPORT, documents.redhat(), format="json")
    assert r.status_code == 201
    assert r.json() == {"source": "csaf", "imported": 2, "created": 0, "updated": 0, "unchanged": 2}
    assert catalog() == first
    assert set(PatchCatalog.objects.values_list("pk", flat=True)) == ids
    assert PatchCve.objects.count() == 3

    # A revision of the advisory: a new CVE on openssl, raised to critical.
    revised = documents.redhat()
    revised["document"]["tracking"]["version"] = "2"
    revised["document"]["tracking"]["revision_history"].append(
        {"date": "2024-05-01T10:00:00+00:00", "number": "2", "summary": "CVE-2024-9999 added"}
    )
    revised["document"]["tracking"]["current_release_date"] = "2024-05-01T10:00:00+00:00"
    fixed = revised["vulnerabilities"][0]["product_status"]["fixed"]
    revised["vulnerabilities"].append(
        {
            "cve": "CVE-2024-9999",
            "notes": [{"category": "description", "text": "Worse.", "title": "Vulnerability description"}],
            "product_status": {"fixed": fixed[:1]},
            "remediations": [{"category": "vendor_fix", "details": "Update.", "product_ids": fixed[:1]}],
            "threats": [{"category": "impact", "details": "Critical"}],
        }
    )
    revised["document"]["aggregate_severity"]["text"] = "Critical"
    r = admin.post(IMPORT, revised, format="json")
    assert r.status_code == 201, r.content
    assert r.json() == {"source": "csaf", "imported": 2, "created": 0, "updated": 1, "unchanged": 1}
    after = catalog()
    assert set(PatchCatalog.objects.values_list("pk", flat=True)) == ids
    assert after[("rhel", "openssl", "1:3.0.7-27.el9")]["severity"] == 4
    assert after[("rhel", "openssl", "1:3.0.7-27.el9")]["cves"] == ["CVE-2023-5678", "CVE-2024-9999"]
    assert [event["updated"] for event in imports()] == [0, 0, 1]

    # A CVE more and nothing else: the entry that gains it is updated.
    again = copy.deepcopy(revised)
    libs = [p for p in fixed if "openssl-libs" in p]
    again["vulnerabilities"][2]["product_status"]["fixed"] += libs
    again["vulnerabilities"][2]["remediations"][0]["product_ids"] += libs
    r = admin.post(IMPORT, again, format="json")
    assert r.json() == {"source": "csaf", "imported": 2, "created": 0, "updated": 1, "unchanged": 1}
    assert catalog()[("rhel", "openssl-libs", "1:3.0.7-27.el9")]["cves"] == [
        "CVE-2023-5678",
        "CVE-2024-0727",
        "CVE-2024-9999",
    ]


def _without(path: list, document: dict) -> dict:
    *parents, last = path
    holder = document
    for key in parents:
        holder = holder[key]
    del holder[last]
    return document


def _with(path: list, value, document: dict) -> dict:
    *parents, last = path
    holder = document
    for key in parents:
        holder = holder[key]
    if isinstance(holder, list) and last == len(holder):
        holder.append(value)
    else:
        holder[last] = value
    return document


MALFORMED = [
    (
        "unknown product id in fixed",
        lambda d: _with(["vulnerabilities", 0, "product_status", "fixed", 3], "CSAFPID-NOPE", d),
        "/vulnerabilities/0/product_status/fixed/3",
        "product id `CSAFPID-NOPE` is not defined in product_tree",
    ),
    (
        "unknown product id in a vendor fix",
        lambda d: _with(["vulnerabilities", 1, "remediations", 0, "product_ids", 1], "ghost", d),
        "/vulnerabilities/1/remediations/0/product_ids/1",
        "product id `ghost` is not defined in product_tree",
    ),
    (
        "a product id defined twice",
        lambda d: _with(
            ["product_tree", "branches", 0, "branches", 2, "branches", 0, "product", "product_id"],
            "openssl-1:3.0.7-27.el9.x86_64",
            d,
        ),
        "/product_tree/branches/0/branches/2/branches/0/product/product_id",
        "defined",
    ),
    (
        "a malformed CVE id",
        lambda d: _with(["vulnerabilities", 1, "cve"], "CVE-24-1", d),
        "/vulnerabilities/1/cve",
        "does not match",
    ),
    (
        "a CVE id longer than the catalog holds",
        lambda d: _with(["vulnerabilities", 1, "cve"], "CVE-2024-" + "1" * 40, d),
        "/vulnerabilities/1/cve",
        "longer than 40 characters",
    ),
    (
        "a vendor name longer than the catalog holds",
        lambda d: _with(["product_tree", "branches", 0, "name"], "Red Hat " * 13, d),
        "/product_tree/branches/0/branches/0/branches/0/product",
        "longer than 100 characters",
    ),
    ("no title", lambda d: _without(["document", "title"], d), "/document", "'title' is a required property"),
    (
        "CSAF 2.1",
        lambda d: _with(["document", "csaf_version"], "2.1", d),
        "/document/csaf_version",
        "is not one of ['2.0']",
    ),
    (
        "fixed and known affected at once",
        lambda d: _with(
            ["vulnerabilities", 1, "product_status", "known_affected"],
            ["BaseOS-9.4.0.GA:openssl-libs-1:3.0.7-27.el9.x86_64"],
            d,
        ),
        "/vulnerabilities/1/product_status",
        "contradicting groups `affected` and `fixed`",
    ),
    ("not an advisory at all", lambda d: {"hello": "world"}, "/", "'document' is a required property"),
]


@pytest.mark.parametrize("label,spoil,path,reason", MALFORMED, ids=[label for label, *_ in MALFORMED])
def test_a_malformed_document_is_refused_at_its_json_path_and_nothing_is_written(admin, label, spoil, path, reason):
    r = admin.post(IMPORT, spoil(documents.redhat()), format="json")
    assert r.status_code == 400, r.content
    answer = r.json()
    assert path in answer, answer
    assert any(reason.lower() in message.lower() for message in answer[path]), answer
    assert not PatchCatalog.objects.exists() and not PatchCve.objects.exists()
    assert imports() == []


def test_a_body_that_is_not_an_object_is_refused(admin):
    r = admin.client.post(IMPORT, data=json.dumps([documents.redhat()]), content_type="application/json")
    assert r.status_code == 400
    assert r.json() == {"detail": "The body must be a JSON object."}
    assert not PatchCatalog.objects.exists()


@pytest.mark.parametrize("role", ["technician", "approver", "compliance", "psa", "edr"])
def test_other_roles_may_not_import_and_the_refusal_is_recorded(caller, role):
    who = caller(f"{role}-1", role)
    r = who.post(IMPORT, documents.redhat(), format="json")
    assert r.status_code == 403
    assert r.json() == {"detail": "Your role may not import advisories."}
    assert not PatchCatalog.objects.exists()
    refusal = HistoryEvent.objects.get(action="refused.patch_catalog.import")
    assert refusal.actor == f"user:{role}-1"
    assert refusal.payload["reason"] == "role may not import advisories"


def test_the_scanner_may_import(caller):
    r = caller("scan", "scanner").post(IMPORT, documents.siemens(), format="json")
    assert r.status_code == 201, r.content
    assert PatchCatalog.objects.count() == 2


def test_the_command_imports_files_and_refuses_a_malformed_one_naming_its_path(db, tmp_path, capsys):
    rhsa, ssa, bad = tmp_path / "rhsa.json", tmp_path / "ssa.json", tmp_path / "bad.json"
    rhsa.write_text(json.dumps(documents.redhat()))
    ssa.write_text(json.dumps(documents.siemens()))
    call_command("import_advisories", str(rhsa), str(ssa))
    out = capsys.readouterr().out
    assert f"{rhsa}: 2 entries (2 new, 0 updated, 0 unchanged)" in out
    assert f"{ssa}: 2 entries (2 new, 0 updated, 0 unchanged)" in out
    assert PatchCatalog.objects.count() == 4
    assert [event.actor for event in HistoryEvent.objects.filter(action="patch_catalog.imported")] == [
        "cli:import_advisories",
        "cli:import_advisories",
    ]

    spoiled = documents.redhat()
    spoiled["vulnerabilities"][0]["product_status"]["fixed"].append("nope")
    bad.write_text(json.dumps(spoiled))
    with pytest.raises(CommandError) as refused:
        call_command("import_advisories", str(bad))
    assert "/vulnerabilities/0/product_status/fixed/3" in str(refused.value)
    assert "nothing written" in str(refused.value)
    assert PatchCatalog.objects.count() == 4

    with pytest.raises(CommandError, match="not JSON"):
        (tmp_path / "junk.json").write_text("{")
        call_command("import_advisories", str(tmp_path / "junk.json"))
