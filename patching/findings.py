"""Vulnerability findings: the scanner's (or a pen tester's) side of "Vulnerability → remediation",
and the only place that writes them (docs/patching.md#the-scanners-round-trip).

A finding is reported on a PSA remediation task's authority (:func:`create`). When a patch job's
re-scan shows its fix installed on its asset, it awaits verification and the scanner is asked
(``finding.verification_requested`` through the outbox, :func:`fixes_installed`). The scanner's
answer (:func:`verify`) is evidence either way (``scan_verification``, beside the job's
``patch_result``): verified, the PSA hears ``case.may_close`` once nothing else holds the case
open; not verified, the finding is ``reopened`` and the PSA hears ``finding.reopened``. A pen
test's finding goes the same way: the tester's retest is the verification.
"""

from __future__ import annotations

import re
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from evidence import services as evidence
from evidence.models import RmmEvidence
from patching import kind
from patching.models import (
    FindingSource,
    FindingStatus,
    PatchCatalog,
    PatchInstallJob,
    Severity,
    VulnerabilityFinding,
    finding_moves_to,
)
from patching.scans import Scan
from rmm.access import roles as access
from rmm.authority import laws as authority
from rmm.authority.models import PsaTask
from rmm.core.errors import Conflict, InvalidInput, NotFound
from rmm.engine.services import cases, deciding
from rmm.history import services as history
from rmm.inventory.models import Asset
from rmm.outbox import services as outbox

CAPABILITY = "report_findings"
VERIFICATION_REQUESTED = "finding.verification_requested"  # outbound events (apps.py registers them)
REOPENED = "finding.reopened"
PATCH_VERIFIED = "patch.verified"
SCAN_VERIFICATION = "scan_verification"  # evidence type
CVE = re.compile(r"^CVE-\d{4}-\d{4,19}$")
MAX_TEXT = 200
MAX_DETAILS = 10_000
F = FindingStatus


def _text(value, field: str, *, required: bool = True) -> str:
    value = (value or "").strip() if isinstance(value, str) or value is None else None
    if value is None:
        raise InvalidInput("Must be text.", field=field)
    if required and not value:
        raise InvalidInput("This field is required.", field=field)
    if len(value) > MAX_TEXT:
        raise InvalidInput(f"At most {MAX_TEXT} characters.", field=field)
    return value


def _catalog_entry(asset: Asset, product: str, version: str) -> PatchCatalog | None:
    """The catalog's entry of this fix on this asset's distribution (its patch rows say which)."""
    entries = PatchCatalog.objects.filter(product=product, patch_id=version)
    return entries.filter(asset_patches__asset=asset).first() or entries.first()


def create(
    user,
    *,
    asset_id,
    cve: str,
    product: str,
    severity: str,
    scanner_ref: str,
    source: str,
    psa_task_id,
    fixed_version: str = "",
    patch_id: str = "",
) -> VulnerabilityFinding:
    """A finding on an asset the caller may see, on a PSA task that covers that asset (Law 1)."""
    deciding.require_role(user, CAPABILITY, "finding.create")
    cve = _text(cve, "cve").upper()
    if not CVE.match(cve):
        raise InvalidInput("Not a CVE id (CVE-YYYY-NNNN…).", field="cve")
    product = _text(product, "product")
    fixed_version = _text(fixed_version, "fixed_version", required=False)
    patch_id = _text(patch_id, "patch_id", required=False)
    if not (fixed_version or patch_id):
        raise InvalidInput("Give the fixed version or the patch id.", field="fixed_version")
    try:
        level = Severity.named(severity)
    except KeyError:
        raise InvalidInput(f"Must be one of: {', '.join(s.label for s in Severity)}.", field="severity") from None
    scanner_ref = _text(scanner_ref, "scanner_ref")
    if source not in FindingSource.values:
        raise InvalidInput(f"Must be one of: {', '.join(FindingSource.values)}.", field="source")
    asset = Asset.objects.filter(pk=asset_id, site__in=access.visible_sites(user)).first()
    if asset is None:
        history.record_refusal(
            user, "finding.create", reason="unknown asset or outside your sites", payload={"asset": str(asset_id)}
        )
        raise NotFound("No such asset.", field="asset")
    task = PsaTask.objects.select_related("case").filter(pk=psa_task_id).first() if psa_task_id else None
    problem = authority.authority_problem(task, asset)
    if problem:
        history.record_refusal(
            user,
            "finding.create",
            reason=f"no authority: {problem}",
            site_id=asset.site_id,
            payload={"asset": str(asset.pk), "psa_task_id": str(psa_task_id) if psa_task_id else None},
        )
        raise InvalidInput(f"No authority: {problem}.", field="psa_task_id")
    with transaction.atomic():
        finding = VulnerabilityFinding.objects.create(
            asset=asset,
            site_id=asset.site_id,
            cve=cve,
            product=product,
            fixed_version=fixed_version,
            patch_id=patch_id,
            severity=level,
            scanner_ref=scanner_ref,
            source=source,
            psa_task=task,
            psa_case_id=task.case_id,
            catalog_entry=_catalog_entry(asset, product, patch_id or fixed_version),
            reported_by=user,
        )
        history.append(
            user,
            "finding.created",
            finding,
            site_id=asset.site_id,
            payload={
                "cve": cve,
                "product": product,
                "fixed_version": fixed_version,
                "patch_id": patch_id,
                "source": source,
                "scanner_ref": scanner_ref,
                "psa_task_id": str(task.pk),
                "psa_case_id": str(task.case_id),
            },
        )
    return finding


def _fixed(finding: VulnerabilityFinding, scan: Scan) -> bool:
    """The scan reports the fix installed: its version (or update id), or its catalog entry's."""
    installed = scan.installed.get(finding.product)
    return installed is not None and installed in {finding.fixed_version, finding.patch_id} - {""}


def fixes_installed(job: PatchInstallJob, scan: Scan, now: datetime) -> int:
    """A patch job's re-scan (written by the intake): each open or reopened finding of the asset
    whose fix it reports installed awaits verification, and the scanner is asked. One query when
    the asset has no finding. Returns how many."""
    found = [
        f
        for f in VulnerabilityFinding.objects.filter(
            asset_id=job.asset_id,
            status__in=finding_moves_to(F.AWAITING_VERIFICATION),
        ).select_related("asset", "catalog_entry")
        if _fixed(f, scan)
    ]
    moved = []
    for finding in found:
        installed = scan.installed[finding.product]
        entry = finding.catalog_entry or _catalog_entry(finding.asset, finding.product, installed)
        claimed = VulnerabilityFinding.objects.filter(pk=finding.pk, status=finding.status).update(
            status=F.AWAITING_VERIFICATION,
            fixed_by=job.patch_job_id,
            installed_version=installed,
            fix_detected_at=now,
            catalog_entry=entry,
        )
        if not claimed:
            continue
        history.append(
            "system",
            "finding.fix_installed",
            finding,
            site_id=finding.site_id,
            payload={"patch_job": str(job.patch_job_id), "job": str(job.pk), "installed_version": installed},
        )
        moved.append(
            outbox.Emitted(
                VERIFICATION_REQUESTED,
                VulnerabilityFinding._meta.label_lower,
                str(finding.pk),
                finding.site_id,
                {
                    **_about(finding),
                    "status": F.AWAITING_VERIFICATION,
                    "installed_version": installed,
                    "patch_job": str(job.patch_job_id),
                    "job": str(job.pk),
                    "verify": f"/api/v1/vulnerability-findings/{finding.pk}/verify/",
                },
            )
        )
    outbox.emit_many(moved)
    return len(moved)


def _about(finding: VulnerabilityFinding) -> dict:
    return {
        "finding": str(finding.pk),
        "asset": str(finding.asset_id),
        "hostname": finding.asset.hostname,
        "cve": finding.cve,
        "product": finding.product,
        "fixed_version": finding.fixed_version,
        "patch_id": finding.patch_id,
        "scanner_ref": finding.scanner_ref,
        "source": finding.source,
        "psa_task_id": str(finding.psa_task_id),
        "psa_case_id": str(finding.psa_case_id),
    }


def visible(user):
    """The findings of the sites the caller may see."""
    return VulnerabilityFinding.objects.filter(site__in=access.visible_sites(user))


def _patch_results(finding: VulnerabilityFinding) -> list[dict]:
    """The ``patch_result`` evidence of the job that installed the fix on this asset."""
    if finding.fixed_by_id is None:
        return []
    jobs = PatchInstallJob.objects.filter(patch_job=finding.fixed_by_id, asset=finding.asset_id).values("pk")
    rows = RmmEvidence.objects.filter(evidence_type=kind.PATCH_RESULT, related_id__in=jobs).order_by("captured_at")
    return [{"id": str(row.pk), "hash": row.hash, "related_id": str(row.related_id)} for row in rows]


def verify(user, finding: VulnerabilityFinding, *, verified: bool, details: str = "") -> VulnerabilityFinding:
    """The scanner's verification (or the tester's retest) of a finding awaiting it."""
    deciding.require_role(user, CAPABILITY, "finding.verify", finding, site_id=finding.site_id)
    if not isinstance(verified, bool):
        raise InvalidInput("Must be true or false.", field="verified")
    if not isinstance(details, str) or len(details) > MAX_DETAILS:
        raise InvalidInput(f"Text of at most {MAX_DETAILS} characters.", field="details")
    new = F.VERIFIED if verified else F.REOPENED
    now = timezone.now()
    with history.refusals_recorded(), transaction.atomic():
        history.lock()
        claimed = VulnerabilityFinding.objects.filter(pk=finding.pk, status__in=finding_moves_to(new)).update(
            status=new, verified_by=user, verified_at=now, verification_details=details
        )
        if not claimed:
            current = VulnerabilityFinding.objects.values_list("status", flat=True).get(pk=finding.pk)
            raise history.Refused(
                Conflict(f"This finding is {current}: it awaits no verification.", field="status"),
                user,
                "finding.verify",
                finding,
                reason=f"already {current}",
                site_id=finding.site_id,
            )
        finding.refresh_from_db()
        patch_results = _patch_results(finding)
        proof = evidence.record(
            asset=finding.asset,
            evidence_type=SCAN_VERIFICATION,
            related_entity="vulnerability_finding",
            related_id=finding.pk,
            document={
                "evidence_type": SCAN_VERIFICATION,
                **_about(finding),
                "severity": Severity(finding.severity).label,
                "verified": verified,
                "details": details,
                "verified_by": user.get_username(),
                "verified_at": now,
                "installed_version": finding.installed_version,
                "patch_job": str(finding.fixed_by_id) if finding.fixed_by_id else None,
                "patch_result_evidence": patch_results,
            },
            site_id=finding.site_id,
            psa_task_id=finding.psa_task_id,
            psa_case_id=finding.psa_case_id,
            actor=user,
        )
        history.append(
            user,
            "finding.verified" if verified else "finding.reopened",
            finding,
            site_id=finding.site_id,
            payload={"verified": verified, "evidence": str(proof.pk), "patch_result_evidence": len(patch_results)},
        )
        told = {**_about(finding), "status": new, "details": details, "evidence": _evidence_ref(proof)}
        if verified:
            outbox.emit(PATCH_VERIFIED, finding, site_id=finding.site_id, data=told)
            cases.tell_if_done([finding.psa_case_id], {"finding": told})
        else:
            outbox.emit(REOPENED, finding, site_id=finding.site_id, data=told)
    return finding


def _evidence_ref(row: RmmEvidence) -> dict:
    return {"id": str(row.pk), "type": row.evidence_type, "hash": row.hash}


def case_has_unverified_findings(case_id) -> bool:
    """A case holds open while a finding under it is not verified (rmm.engine.services.cases)."""
    return VulnerabilityFinding.objects.filter(psa_case_id=case_id).exclude(status=F.VERIFIED).exists()
