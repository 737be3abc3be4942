"""Vulnerability findings (issue 16, part 5): the scanner reports a finding on a PSA remediation
task; a patch job's re-scan that shows the fix asks for verification (``finding.verification_requested``
and the awaiting list); the scanner's verification makes it ``verified`` with ``scan_verification``
evidence beside the job's ``patch_result`` and tells the PSA the case may close, or reopens it and
says so. Delivered to a real PSA receiver on 127.0.0.1, signed."""

from __future__ import annotations

import json
import uuid

import pytest

from evidence.models import RmmEvidence
from evidence.services import read_blob
from patching.models import FINDING_TRANSITIONS, FindingStatus, PatchInstallJob, VulnerabilityFinding
from rmm.history.models import HistoryEvent
from tests.helpers import approved_authority, make_agent
from tests.patching.scanning import dpkg_document, run, scan

ZZ = {"zz-rmm-tool": "1.0-1", "zz-rmm-lib": "2.0-1"}
UPGRADES = {"zz-rmm-tool": "1.0-2", "zz-rmm-lib": "2.1-1"}
URL = "/api/v1/vulnerability-findings/"


def told(receiver, event: str) -> list[dict]:
    return [item["body"] for item in receiver.received if item["body"]["event"] == event and item["signed"]]


@pytest.fixture
def scanned(world, caller):
    """The asset's scan reported two packages with updates available; a scanner account."""
    scan(world, dpkg_document(ZZ, UPGRADES))
    world["scanner"] = caller("scanner", "scanner")
    return world


def finding(world, **extra):
    body = {
        "asset": str(world["agent"].asset_id),
        "cve": "CVE-2026-12345",
        "product": "zz-rmm-tool",
        "fixed_version": "1.0-2",
        "severity": "high",
        "scanner_ref": "scan-42/finding-7",
        "source": "scanner",
        "psa_task_id": str(world["task"].pk),
        **extra,
    }
    return world["scanner"].post(URL, body, format="json")


def patched(world, installed: bool = True):
    """A patch job of zz-rmm-tool 1.0-2, approved by a second person, installed and re-scanned."""
    body = {
        "assets": [str(world["agent"].asset_id)],
        "psa_task_id": str(world["task"].pk),
        "min_severity": "none",
        "reboot_policy": "never",
    }
    made = world["psa"].post("/api/v1/patch-jobs/", body, format="json").json()
    r = world["boss"].post(f"/api/v1/patch-jobs/{made['id']}/approve/", {}, format="json")
    assert r.status_code == 200, r.content
    run(world, None, exit_code=0 if installed else 100)
    wanted = [("zz-rmm-lib", "2.1-1"), ("zz-rmm-tool", "1.0-2")]
    now = {**ZZ, "zz-rmm-tool": "1.0-2", "zz-rmm-lib": "2.1-1"} if installed else ZZ
    run(world, dpkg_document(now, {} if installed else UPGRADES, wanted))
    return made


def verify(world, finding_id, verified=True, who="scanner"):
    body = {"verified": verified, "details": "rescanned: not vulnerable" if verified else "still vulnerable"}
    return world[who].post(f"{URL}{finding_id}/verify/", body, format="json")


def status(finding_id) -> str:
    return VulnerabilityFinding.objects.get(pk=finding_id).status


def test_the_states_and_their_moves_are_defined_once():
    assert set(FINDING_TRANSITIONS) == set(FindingStatus.values)
    assert FINDING_TRANSITIONS[FindingStatus.VERIFIED] == frozenset()


def test_a_scanner_reports_a_finding_on_its_remediation_task(scanned):
    r = finding(scanned, cve="cve-2026-12345")
    assert r.status_code == 201, r.content
    made = r.json()
    assert made["id"] and made["status"] == "open" and made["cve"] == "CVE-2026-12345"
    assert made["psa_case_id"] == str(scanned["task"].case_id) and made["severity"] == "high"
    assert made["catalog_entry"]  # the scan's entry of zz-rmm-tool 1.0-2
    assert HistoryEvent.objects.filter(action="finding.created").count() == 1
    listed = scanned["psa"].get(f"{URL}?status=open").json()
    assert [row["id"] for row in listed["results"]] == [made["id"]]
    assert scanned["psa"].get(f"{URL}?status=awaiting_verification").json()["results"] == []


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"cve": "CVE-26-1"}, "cve"),
        ({"cve": "openssl bug"}, "cve"),
        ({"fixed_version": "", "patch_id": ""}, "fixed_version"),
        ({"severity": "urgent"}, "severity"),
        ({"source": "rumour"}, "source"),
        ({"product": " "}, "product"),
        ({"psa_task_id": None}, "psa_task_id"),
        ({"psa_task_id": str(uuid.uuid4())}, "psa_task_id"),
    ],
    ids=["cve_short", "cve_text", "no_fix", "severity", "source", "product", "no_task", "unknown_task"],
)
def test_bad_input_is_refused_naming_the_field_and_changes_nothing(scanned, extra, field):
    r = finding(scanned, **extra)
    assert r.status_code == 400 and field in r.json(), r.content
    assert not VulnerabilityFinding.objects.exists()


def test_an_unknown_or_out_of_site_asset_is_404_and_recorded(scanned, other_site):
    assert finding(scanned, asset=str(uuid.uuid4())).status_code == 404
    elsewhere, _ = make_agent(other_site, "beta-1")
    other_task = approved_authority(other_site, scanned["psa"].user)
    scanner = scanned["scanner"]
    scanned["scanner"] = type(scanner)("alpha-scanner", "scanner", [scanned["site"]])
    r = finding(scanned, asset=str(elsewhere.asset_id), psa_task_id=str(other_task.pk))
    assert r.status_code == 404 and "asset" in r.json()
    assert HistoryEvent.objects.filter(action="refused.finding.create").count() == 2
    assert not VulnerabilityFinding.objects.exists()


def test_a_role_that_may_not_report_findings_is_403_and_recorded(scanned):
    r = finding({**scanned, "scanner": scanned["tech"]})
    assert r.status_code == 403
    assert HistoryEvent.objects.filter(action="refused.finding.create", actor__startswith="user:tech").exists()
    assert not VulnerabilityFinding.objects.exists()


def test_a_task_of_another_site_gives_no_authority_over_the_asset(scanned, other_site):
    other_task = approved_authority(other_site, scanned["psa"].user)
    r = finding(scanned, psa_task_id=str(other_task.pk))
    assert r.status_code == 400 and "psa_task_id" in r.json()
    assert HistoryEvent.objects.filter(action="refused.finding.create").exists()


def test_the_round_trip_rescan_asks_the_scanner_and_its_verification_lets_the_case_close(
    scanned, psa_webhook, django_capture_on_commit_callbacks
):
    made = finding(scanned).json()
    with django_capture_on_commit_callbacks(execute=True):
        request = patched(scanned)
    assert status(made["id"]) == "awaiting_verification"
    # the patch job ended, but the finding holds the case open until the scanner verifies
    assert told(psa_webhook, "case.may_close") == []
    [asked] = told(psa_webhook, "finding.verification_requested")
    assert asked["finding"] == made["id"] and asked["cve"] == "CVE-2026-12345"
    assert asked["installed_version"] == "1.0-2" and asked["patch_job"] == request["id"]
    assert asked["verify"] == f"{URL}{made['id']}/verify/"
    awaiting = scanned["scanner"].get(f"{URL}?status=awaiting_verification").json()["results"]
    assert [(row["id"], row["patch_job"]) for row in awaiting] == [(made["id"], request["id"])]

    with django_capture_on_commit_callbacks(execute=True):
        r = verify(scanned, made["id"])
    assert r.status_code == 200, r.content
    assert r.json()["status"] == "verified" and r.json()["verified_by"] == "scanner"
    job = PatchInstallJob.objects.get(patch_job=request["id"])
    results = {str(e.pk) for e in RmmEvidence.objects.filter(related_id=job.pk, evidence_type="patch_result")}
    [proof] = RmmEvidence.objects.filter(evidence_type="scan_verification")
    document = json.loads(read_blob(proof))
    assert document["verified"] is True and document["details"] == "rescanned: not vulnerable"
    assert {item["id"] for item in document["patch_result_evidence"]} == results and len(results) == 2
    assert proof.psa_case_id == scanned["task"].case_id and str(proof.related_id) == made["id"]
    assert HistoryEvent.objects.get(action="finding.verified").payload["evidence"] == str(proof.pk)
    [proven] = told(psa_webhook, "patch.verified")
    assert proven["finding"] == made["id"] and proven["status"] == "verified"
    assert proven["evidence"]["id"] == str(proof.pk) and proven["details"] == "rescanned: not vulnerable"
    [closing] = told(psa_webhook, "case.may_close")
    assert closing["psa_case_id"] == str(scanned["task"].case_id)
    assert closing["jobs"] == {"succeeded": 2}  # the scan and the patch job
    assert closing["finding"]["finding"] == made["id"] and closing["finding"]["evidence"]["id"] == str(proof.pk)
    # decided once: a second verification has nothing to verify
    assert verify(scanned, made["id"]).status_code == 409


def test_a_failed_verification_reopens_the_finding_and_tells_the_psa(
    scanned, psa_webhook, django_capture_on_commit_callbacks
):
    made = finding(scanned).json()
    with django_capture_on_commit_callbacks(execute=True):
        patched(scanned)
        r = verify(scanned, made["id"], verified=False)
    assert r.status_code == 200 and r.json()["status"] == "reopened"
    [reopened] = told(psa_webhook, "finding.reopened")
    assert reopened["finding"] == made["id"] and reopened["details"] == "still vulnerable"
    assert told(psa_webhook, "case.may_close") == [] and told(psa_webhook, "patch.verified") == []
    [proof] = RmmEvidence.objects.filter(evidence_type="scan_verification")
    assert json.loads(read_blob(proof))["verified"] is False
    assert verify(scanned, made["id"]).status_code == 409  # reopened: awaits a fix, not a verification


def test_a_failed_install_leaves_the_finding_open(scanned, psa_webhook, django_capture_on_commit_callbacks):
    made = finding(scanned).json()
    with django_capture_on_commit_callbacks(execute=True):
        patched(scanned, installed=False)
    assert status(made["id"]) == "open"
    assert told(psa_webhook, "finding.verification_requested") == []


def test_a_pen_test_finding_is_verified_by_the_testers_retest_through_the_same_calls(scanned):
    made = finding(scanned, source="pentest", cve="CVE-2026-0001", fixed_version="", patch_id="1.0-2").json()
    assert made["source"] == "pentest"
    patched(scanned)
    assert verify(scanned, made["id"]).json()["status"] == "verified"


def test_a_verification_for_a_finding_not_awaiting_one_is_409_and_recorded(scanned):
    made = finding(scanned).json()
    r = verify(scanned, made["id"])
    assert r.status_code == 409 and "status" in r.json()
    assert HistoryEvent.objects.filter(action="refused.finding.verify").count() == 1
    assert status(made["id"]) == "open" and not RmmEvidence.objects.filter(evidence_type="scan_verification")


def test_verification_needs_the_scanners_role_and_the_findings_site(scanned, caller, other_site):
    made = finding(scanned).json()
    patched(scanned)
    assert verify(scanned, made["id"], who="psa").status_code == 403
    assert HistoryEvent.objects.filter(action="refused.finding.verify", actor__startswith="user:psa").exists()
    scanned["beta"] = caller("beta-scanner", "scanner", [other_site])
    assert verify(scanned, made["id"], who="beta").status_code == 404
    assert scanned["beta"].get(URL).json()["results"] == []
    assert status(made["id"]) == "awaiting_verification"
