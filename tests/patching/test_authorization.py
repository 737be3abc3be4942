"""Law 7, the patching app's routes: the catalog (global: read by every role, imported into by
admins and the scanner) and an asset's patches (per site), for every role, in-site and out-of-site
(harness: tests/support/authorization.py)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from patching import services
from patching.models import (
    AssetPatch,
    MaintenanceWindow,
    PatchCatalog,
    PatchJob,
    PatchScanSchedule,
    Severity,
    VulnerabilityFinding,
)
from rmm.authority.models import PsaTask
from tests.patching import documents
from tests.support.authorization import (
    APPROVE,
    EVERYONE,
    IMPORT_ADVISORIES,
    IN,
    REPORT_FINDINGS,
    REQUEST_JOBS,
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
    # --- scans and patch jobs: jobs of a site, like script jobs
    api(
        "POST",
        "/api/v1/patch-scans/",
        only(REQUEST_JOBS, 400, 403),
        body={"assets": ["{asset}"], "psa_task_id": "{task}"},
        label="agent without structured results",
    ),
    api(
        "POST",
        "/api/v1/patch-jobs/",
        only(REQUEST_JOBS, 400, 403),
        body={"assets": ["{asset}"], "psa_task_id": "{task}", "patches": ["{patch}"], "scheduled_for": "2020-01-01"},
        label="scheduled in the past",
    ),
    api("GET", "/api/v1/patch-jobs/", 200, shows=(("patch_job", IN),)),
    api("GET", "/api/v1/patch-jobs/{patch_job}/", 200, 404, hidden=("patch_job",)),
    # A patch installs as root: the matrix's approvers lack the privileged approval permission.
    api("POST", "/api/v1/patch-jobs/{patch_job}/approve/", 403, 404, hidden=("patch_job",), label="needs it"),
    api(
        "POST",
        "/api/v1/patch-jobs/{patch_job}/reject/",
        only(APPROVE, 200, 403),
        404,
        body={"reason": "not now"},
        hidden=("patch_job",),
    ),
    # --- scan schedules: a site's, like its jobs (nothing created: the interval is too short)
    api(
        "POST",
        "/api/v1/patch-scan-schedules/",
        only(REQUEST_JOBS, 400, 403),
        body={"site": "alpha", "psa_task_id": "{task}", "interval_seconds": 60},
        label="interval too short",
    ),
    api("GET", "/api/v1/patch-scan-schedules/", 200, shows=(("scan_schedule", IN),)),
    api("GET", "/api/v1/patch-scan-schedules/{scan_schedule}/", 200, 404, hidden=("scan_schedule",)),
    api(
        "POST",
        "/api/v1/patch-scan-schedules/{scan_schedule}/stop/",
        only(REQUEST_JOBS, 400, 403),
        404,
        body={},
        hidden=("scan_schedule",),
        label="without a reason",
    ),
    # --- maintenance windows: a site's
    api(
        "POST",
        "/api/v1/maintenance-windows/",
        only(REQUEST_JOBS, 201, 403),
        only(REQUEST_JOBS, 400, 403),
        body={"site": "alpha", "days": ["sat"], "start": "22:00", "duration_minutes": 60, "timezone": "UTC"},
    ),
    api("GET", "/api/v1/maintenance-windows/", 200, shows=(("window", IN),)),
    api("GET", "/api/v1/maintenance-windows/{window}/", 200, 404, hidden=("window",)),
    api("DELETE", "/api/v1/maintenance-windows/{window}/", only(REQUEST_JOBS, 204, 403), 404, hidden=("window",)),
    # --- fleet compliance and the console's pages: the caller's sites only
    api("GET", "/api/v1/patch-compliance/", 200),
    page("GET", "/console/patching/compliance/", 200, shows=(("patch_job", IN),)),
    page("GET", "/console/patching/jobs/{patch_job}/", 200, 404, hidden=("patch_job",)),
    # --- vulnerability findings: the scanner reports and verifies them, on its sites' assets
    api(
        "POST",
        "/api/v1/vulnerability-findings/",
        only(REPORT_FINDINGS, 201, 403),
        {**dict.fromkeys(REPORT_FINDINGS, 404), "*": 403},  # the asset is not among their sites
        body={
            "asset": "{asset}",
            "cve": "CVE-2026-1000",
            "product": "SIMATIC",
            "fixed_version": "V3.1.0",
            "severity": "high",
            "scanner_ref": "matrix-1",
            "source": "scanner",
            "psa_task_id": "{task}",
        },
    ),
    api("GET", "/api/v1/vulnerability-findings/", 200, shows=(("finding", IN),)),
    api("GET", "/api/v1/vulnerability-findings/{finding}/", 200, 404, hidden=("finding",)),
    api(
        "POST",
        "/api/v1/vulnerability-findings/{finding}/verify/",
        only(REPORT_FINDINGS, 200, 403),
        404,
        body={"verified": True, "details": "rescanned"},
        hidden=("finding",),
    ),
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
        # A patch job awaiting its decision, requested by the world's PSA account (a third party).
        task = PsaTask.objects.select_related("case").get(pk=matrix_world.ids["task"])
        request = PatchJob.objects.create(
            psa_task=task,
            psa_case=task.case,
            site_id=task.case.site_id,
            scheduled_for=timezone.now(),
            reboot_policy="never",
            status="awaiting_approval",
            requested_by=get_user_model().objects.get(username="w-psa"),
        )
        schedule = PatchScanSchedule.objects.create(
            site_id=task.case.site_id,
            psa_task=task,
            interval_seconds=86400,
            created_by=request.requested_by,
            created_at=timezone.now(),
            dispatched_until=timezone.now(),
        )
        window = MaintenanceWindow.objects.create(
            site_id=task.case.site_id,
            days=[5],
            start="22:00",
            duration_minutes=60,
            timezone="UTC",
            created_by=request.requested_by,
        )
        # A finding whose fix a re-scan showed: it awaits the scanner's verification.
        finding = VulnerabilityFinding.objects.create(
            asset_id=matrix_world.ids["asset"],
            site_id=task.case.site_id,
            cve="CVE-2026-0001",
            product=entry.product,
            fixed_version=entry.patch_id,
            severity=Severity.HIGH,
            scanner_ref="matrix-0",
            source="scanner",
            psa_task=task,
            psa_case=task.case,
            status="awaiting_verification",
            reported_by=get_user_model().objects.get(username="w-root"),
        )
    matrix_world.ids.update(
        patch=str(entry.pk),
        asset_patch=str(found.pk),
        patch_job=str(request.pk),
        scan_schedule=str(schedule.pk),
        window=str(window.pk),
        finding=str(finding.pk),
    )
    return matrix_world


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_matrix(row: Row, patch_world: World, matrix: World):
    check(row, matrix)
