"""Scans (issue 16, parts 2 and 3): the read-only collection scripts, their parsers against
recorded output, the scan job through the API on a PSA task's authority, and the intake that
writes only what changed since the asset's last scan, in a constant number of queries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from evidence.models import RmmEvidence
from evidence.services import read_blob
from patching import intake, kind, scans
from patching.models import AssetPatch, PatchCatalog, PatchScanJob, Severity
from rmm.history.models import HistoryEvent
from tests.patching import documents
from tests.patching.scanning import (
    dpkg_document,
    recorded_dpkg,
    recorded_rpm,
    recorded_wua,
    scan,
)


def test_the_debian_parser_reads_installed_packages_and_the_simulated_upgrade():
    parsed = scans.parse(recorded_dpkg())
    assert (parsed.family, parsed.vendor) == ("dpkg", "debian")
    # only packages dpkg says are installed; a multi-arch qualifier dropped
    assert parsed.installed == {"libssl3": "3.0.11-1~deb12u1", "openssl": "3.0.11-1~deb12u1", "bash": "5.2.15-2+b2"}
    # upgrades of installed packages only: a newly pulled-in package is not one
    assert {name: a.version for name, a in parsed.available.items()} == {
        "libssl3": "3.0.11-1~deb12u2",
        "openssl": "3.0.11-1~deb12u2",
    }
    assert parsed.available["libssl3"].advisory == "security" and parsed.available["openssl"].advisory == ""


def test_the_rhel_parser_reads_rpm_check_update_and_the_advisories_severities():
    parsed = scans.parse(recorded_rpm())
    assert parsed.installed["openssl"] == "1:3.0.7-24.el9" and parsed.installed["kernel"] == "5.14.0-362.8.1.el9_3"
    available = {name: (a.version, a.severity, a.advisory) for name, a in parsed.available.items()}
    assert available == {
        "openssl": ("1:3.0.7-27.el9", Severity.MEDIUM, "RHSA-2024:2447"),
        "openssl-libs": ("1:3.0.7-27.el9", Severity.MEDIUM, "RHSA-2024:2447"),
        "kernel": ("5.14.0-427.13.1.el9_4", Severity.HIGH, "RHSA-2024:2758"),
        "python3-urllib3": ("1.26.5-5.el9", Severity.NONE, "RHBA-2024:2500"),  # a bugfix: no severity
    }  # and nothing of the "Obsoleting Packages" section


def test_the_windows_parser_reads_the_update_agents_installed_and_missing_updates():
    parsed = scans.parse(recorded_wua())
    assert (parsed.family, parsed.vendor) == ("wua", "windows")
    assert list(parsed.installed.values()) == ["KB5036893"]
    missing = {a.version: a.severity for a in parsed.available.values()}
    assert missing == {"KB5037771": Severity.CRITICAL, "KB2267602": Severity.NONE}


def test_the_windows_script_asks_the_update_agent_and_writes_the_document_without_a_bom():
    script = scans.render_windows()
    assert "Microsoft.Update.Session" in script and "IsInstalled=0 and IsHidden=0" in script
    assert "MsrcSeverity" in script and "KBArticleIDs" in script
    assert "[System.IO.File]::WriteAllText($env:RMM_RESULT_PATH" in script and scans.FORMAT in script


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (None, "not a scan document"),
        ({"format": "other"}, "not a scan document"),
        ({"format": scans.FORMAT, "family": "pkgsrc", "os_id": "x"}, "unknown family"),
        ({"format": scans.FORMAT, "family": "dpkg", "os_id": "Debian 12!"}, "os_id"),
        ({"format": scans.FORMAT, "family": "dpkg", "os_id": "debian", "installed": "openssl 1"}, "installed"),
    ],
    ids=["none", "format", "family", "os_id", "lines"],
)
def test_a_document_that_is_not_a_scan_is_refused_with_the_reason(document, reason):
    with pytest.raises(scans.ScanError, match=reason):
        scans.parse(document)


@pytest.mark.skipif(not shutil.which("dpkg-query") or not shutil.which("apt-get"), reason="needs dpkg and apt")
def test_the_linux_script_runs_read_only_here_and_its_document_parses(tmp_path):
    result = tmp_path / "result.json"
    done = subprocess.run(
        ["sh", "-c", scans.render_linux([("bash", "1")])],
        env={**os.environ, "RMM_RESULT_PATH": str(result)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    parsed = scans.parse(json.loads(result.read_text()))
    assert parsed.family == "dpkg" and "bash" in parsed.installed and parsed.wanted == [("bash", "1")]


def test_a_scan_is_requested_on_a_psa_task_and_its_report_fills_the_catalog_and_the_assets_patches(world):
    answer = scan(world, dpkg_document({"openssl": "3.0.11-1", "bash": "5.2"}, {"openssl": "3.0.11-2"}))
    assert answer["count"] == 1 and answer["psa_case_id"] == str(world["task"].case_id) and answer["batch"]
    job = PatchScanJob.objects.get(pk=answer["jobs"][0]["id"])
    assert job.status == "succeeded"
    step = kind.scan_step(job.asset)
    assert step.interpreter == "sh" and not step.privileged and "dpkg-query" in step.content
    entry = PatchCatalog.objects.get(vendor="debian", product="openssl", patch_id="3.0.11-2")
    assert entry.source == "scan" and entry.fixed_version == "3.0.11-2"
    rows = world["psa"].get(f"/api/v1/assets/{world['agent'].asset_id}/patches/?status=missing").json()["results"]
    assert [(r["patch"]["product"], r["patch"]["patch_id"]) for r in rows] == [("openssl", "3.0.11-2")]
    installed = AssetPatch.objects.filter(asset_id=world["agent"].asset_id, status="installed")
    assert sorted(installed.values_list("patch__product", flat=True)) == ["bash", "openssl"]
    [evidence] = RmmEvidence.objects.filter(related_id=job.pk)
    document = json.loads(read_blob(evidence))
    assert document["evidence_type"] == "patch_scan_result" and document["patch_state"]["created"] == 3


def test_a_scan_needs_authority_and_the_refusal_is_recorded(world):
    body = {"assets": [str(world["agent"].asset_id)], "psa_task_id": None}
    r = world["psa"].post("/api/v1/patch-scans/", body, format="json")
    assert r.status_code == 400 and "psa_task_id" in r.json()
    assert HistoryEvent.objects.filter(action="refused.patch_scan_job.create").exists()
    assert not PatchScanJob.objects.exists()


def test_a_report_that_is_not_a_scan_fails_the_scan_and_writes_nothing(world):
    scan(world, {"format": "nope"})
    job = PatchScanJob.objects.get()
    assert job.status == "failed" and "not a scan document" in job.status_reason
    assert not AssetPatch.objects.exists()


def _state(asset_id) -> dict:
    return {
        (product, version): status
        for product, version, status in AssetPatch.objects.filter(asset_id=asset_id).values_list(
            "patch__product", "patch__patch_id", "status"
        )
    }


def test_later_scans_write_only_what_changed_and_move_rows_by_what_they_report(world):
    asset = world["agent"].asset_id
    now = timezone.now()
    first = scans.parse(dpkg_document({"a": "1", "b": "1", "c": "1"}, {"a": "2", "b": "2"}))
    assert intake.ingest(asset, first, now).created == 5
    again = intake.ingest(asset, first, now)
    assert again.unchanged and again.created == again.changed == 0
    # a installed at 2 (a 1 superseded), b 2 still missing, b 3 now available (b 2 superseded), c removed
    later = scans.parse(dpkg_document({"a": "2", "b": "1"}, {"b": "3"}))
    written = intake.ingest(asset, later, now)
    assert written.created == 1  # b 3
    assert _state(asset) == {
        ("a", "1"): "superseded",
        ("a", "2"): "installed",
        ("b", "1"): "installed",
        ("b", "2"): "superseded",
        ("b", "3"): "missing",
        ("c", "1"): "superseded",
    }
    assert written.changed == 4


def _counted(captured) -> int:
    """Queries made; SQLite's inserts are split by its limit on parameters (999), so there only
    the others are counted. PostgreSQL counts every one."""
    split = connection.vendor == "sqlite"
    return len([q for q in captured.captured_queries if not (split and q["sql"].startswith("INSERT"))])


def _queries(asset, installed: int, now) -> tuple[int, int]:
    """Queries of a first report and of a changed one, with ``installed`` packages and a tenth
    of them upgradable."""
    first = {f"pkg{n}": "1.0" for n in range(installed)}
    available = {f"pkg{n}": "1.1" for n in range(0, installed, 10)}
    with CaptureQueriesContext(connection) as a:
        intake.ingest(asset, scans.parse(dpkg_document(first, available)), now)
    changed = {**first, **{f"pkg{n}": "1.1" for n in range(0, installed, 20)}}
    with CaptureQueriesContext(connection) as b:
        intake.ingest(asset, scans.parse(dpkg_document(changed, available)), now)
    return _counted(a), _counted(b)


def test_the_intake_makes_the_same_number_of_queries_whatever_the_number_of_packages(world, site):
    from tests.helpers import make_agent

    small, _ = make_agent(site, "small")
    large, _ = make_agent(site, "large")
    now = timezone.now()
    few = _queries(small.asset_id, 20, now)
    many = _queries(large.asset_id, 1500, now)
    assert few == many, (few, many)
    assert many[0] <= 9 and many[1] <= 9


def missing_rows(world) -> dict[str, dict]:
    """The asset's missing patches as the API shows them, by product."""
    rows = world["psa"].get(f"/api/v1/assets/{world['agent'].asset_id}/patches/?status=missing").json()["results"]
    return {row["patch"]["product"]: row["patch"] for row in rows}


def test_a_rhel_scan_joins_a_red_hat_advisory_its_cves_and_severity(world, caller):
    scan(world, recorded_rpm())  # dnf offers openssl and openssl-libs 1:3.0.7-27.el9 (RHSA-2024:2447)
    before = missing_rows(world)
    assert before["openssl-libs"]["severity"] == "medium"  # dnf updateinfo's word for the advisory
    r = caller("root", "admin").post("/api/v1/patch-catalog/import/", documents.redhat(), format="json")
    assert r.status_code == 201, r.content
    assert r.json()["created"] == 0 and r.json()["updated"] == 2  # the scan's entries, not new ones
    after = missing_rows(world)
    assert after["openssl-libs"]["id"] == before["openssl-libs"]["id"]
    assert (after["openssl-libs"]["vendor"], after["openssl-libs"]["severity"]) == ("rhel", "high")
    found = world["psa"].get("/api/v1/patch-catalog/", {"cve": "CVE-2024-0727"}).json()["results"]
    assert [entry["id"] for entry in found] == [after["openssl-libs"]["id"]]


def test_a_red_hat_advisory_imported_first_is_the_entry_a_rhel_scan_reports_missing(world, caller):
    r = caller("root", "admin").post("/api/v1/patch-catalog/import/", documents.redhat(), format="json")
    assert r.status_code == 201, r.content
    imported = PatchCatalog.objects.get(product="openssl-libs")
    scan(world, recorded_rpm())
    row = missing_rows(world)["openssl-libs"]
    assert row["id"] == str(imported.pk) and row["severity"] == "high"
    assert sorted(imported.cves.values_list("cve", flat=True)) == ["CVE-2023-5678", "CVE-2024-0727"]
    assert not PatchCatalog.objects.filter(product="openssl-libs", patch_id="1:3.0.7-27.el9", source="scan").exists()
