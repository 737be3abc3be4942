"""Seed C, patch management: the patch catalog (what fixes exist, from imported advisories and from
what scans report), each asset's patch state, scans, patch jobs and the scanner's findings that
patch jobs fix and the scanner verifies."""

import uuid

from django.conf import settings
from django.db import models

from rmm.engine.models import JobBase, job_indexes


class Severity(models.IntegerChoices):
    """An ordered scale, stored as the seed's INTEGER: ``severity >= Severity.HIGH`` is a query."""

    NONE = 0, "none"
    LOW = 1, "low"
    MEDIUM = 2, "medium"
    HIGH = 3, "high"
    CRITICAL = 4, "critical"

    @classmethod
    def named(cls, name: str) -> "Severity":
        """The severity called ``name`` (``high``); KeyError for any other text."""
        return {member.label: member for member in cls}[name]


class CatalogSource(models.TextChoices):
    CSAF = "csaf", "CSAF 2.0 advisory"
    DEBIAN_TRACKER = "debian_tracker", "Debian security tracker"
    SCAN = "scan", "Reported by a scan"


class PatchCatalog(models.Model):
    """Seed C ``patch_catalog``: one fix of one vendor's product. Imports upsert on
    (vendor, product, patch_id): importing the same advisory again updates, never duplicates."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # 500 characters for the unique key's three columns: within PostgreSQL's index row size (2,704
    # bytes) whatever the characters.
    vendor = models.CharField(max_length=100)
    product = models.CharField(max_length=200)
    patch_id = models.CharField(max_length=200, help_text="The fixed version, or the update's id.")
    release_date = models.DateTimeField(null=True, blank=True)
    severity = models.PositiveSmallIntegerField(choices=Severity.choices, default=Severity.NONE)
    fixed_version = models.CharField(max_length=200, blank=True, help_text="The version that carries the fix.")
    title = models.TextField(blank=True)
    url = models.URLField(max_length=1000, blank=True)
    source = models.CharField(max_length=30, choices=CatalogSource.choices)
    source_advisory_id = models.CharField(
        max_length=200, blank=True, help_text="The advisory's own id (a CSAF document's tracking id)."
    )
    imported_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "patch_catalog"
        ordering = ["vendor", "product", "patch_id"]
        constraints = [
            models.UniqueConstraint(fields=["vendor", "product", "patch_id"], name="patch_catalog_vendor_product_patch")
        ]
        indexes = [
            models.Index(fields=["product"], name="patch_catalog_product"),
            models.Index(fields=["severity"], name="patch_catalog_severity"),
        ]
        verbose_name = "catalog entry"
        verbose_name_plural = "patch catalog"

    def __str__(self) -> str:
        return f"{self.vendor} {self.product} {self.patch_id}"


class PatchCve(models.Model):
    """A CVE a catalog entry fixes: a table, so that the catalog is searched by CVE with an index."""

    id = models.BigAutoField(primary_key=True)
    patch = models.ForeignKey(PatchCatalog, on_delete=models.CASCADE, related_name="cves")
    cve = models.CharField(max_length=40, db_index=True)

    class Meta:
        db_table = "patch_catalog_cves"
        ordering = ["cve"]
        constraints = [models.UniqueConstraint(fields=["patch", "cve"], name="patch_catalog_cve_unique")]

    def __str__(self) -> str:
        return self.cve


class AssetPatchStatus(models.TextChoices):
    MISSING = "missing"
    INSTALLING = "installing"
    INSTALLED = "installed"
    FAILED = "failed"
    SUPERSEDED = "superseded"


class AssetPatch(models.Model):
    """Seed C ``asset_patches``: one catalog entry's state on one asset (actual state: only scans,
    which are agent reports, will write it)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    asset = models.ForeignKey("inventory.Asset", on_delete=models.PROTECT, related_name="patches")
    patch = models.ForeignKey(PatchCatalog, on_delete=models.PROTECT, related_name="asset_patches")
    status = models.CharField(max_length=20, choices=AssetPatchStatus.choices)
    detected_at = models.DateTimeField()
    installed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "asset_patches"
        ordering = ["asset", "patch"]
        constraints = [models.UniqueConstraint(fields=["asset", "patch"], name="asset_patch_unique")]
        indexes = [models.Index(fields=["status"], name="asset_patches_status")]

    def __str__(self) -> str:
        return f"{self.patch} on {self.asset_id}: {self.status}"


class AssetPatchScan(models.Model):
    """What an asset's last scan reported, as a digest: a scan that reports the same as the last
    one writes nothing (issue 16: 10,000 assets × 2,000 packages are not rewritten every day)."""

    asset = models.OneToOneField("inventory.Asset", on_delete=models.CASCADE, primary_key=True, related_name="+")
    family = models.CharField(max_length=20, help_text="dpkg, rpm or wua: how the endpoint reports packages.")
    vendor = models.CharField(max_length=100, help_text="The distribution (os-release ID) or microsoft.")
    digest = models.CharField(max_length=64, help_text="sha256 of the last scan's parsed report; empty: read anew.")
    scanned_at = models.DateTimeField()
    # the highest severity among its outstanding patches (null: none), kept by every writer of its
    # rows' status or of a catalog entry's severity (patching.worst), so fleet compliance groups
    # one row per asset instead of every outstanding patch
    worst_outstanding = models.SmallIntegerField(null=True, blank=True, choices=Severity.choices)

    class Meta:
        db_table = "asset_patch_scans"

    def __str__(self) -> str:
        return f"last scan of {self.asset_id}: {self.family} {self.vendor}"


class PatchScanJob(JobBase):
    """One read-only scan of one asset (job kind ``patch_scan``): what is installed and what is
    available; the server parses the report and writes the asset's patch state."""

    asset = models.ForeignKey("inventory.Asset", on_delete=models.PROTECT, related_name="patch_scan_jobs")
    psa_task = models.ForeignKey("authority.PsaTask", on_delete=models.PROTECT, related_name="patch_scan_jobs")
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta(JobBase.Meta):
        db_table = "patch_scan_jobs"
        ordering = ["-created_at"]
        indexes = job_indexes("patch_scan")

    def __str__(self) -> str:
        return f"patch scan of {self.asset_id}"


class RebootPolicy(models.TextChoices):
    NEVER = "never"
    IF_REQUIRED = "if_required"  # when the endpoint says so (/var/run/reboot-required)
    ALWAYS = "always"


class PatchJobStatus(models.TextChoices):
    """The request's own decisions; once released, its status is its batch's."""

    AWAITING_APPROVAL = "awaiting_approval"
    SCHEDULED = "scheduled"  # approved, held until scheduled_for
    REJECTED = "rejected"
    RELEASED = "released"  # its jobs are queued: the batch's status tells the rest


class PatchJob(models.Model):
    """Seed C ``patch_jobs``: one request to install patches on many assets, on a PSA task's
    authority, at ``scheduled_for``, with a reboot policy. It runs as an engine batch of one
    :class:`PatchInstallJob` per asset, and a second person approves or rejects it whole."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Set on every request that exists: one the engine refuses is deleted with its refusal recorded.
    psa_task = models.ForeignKey("authority.PsaTask", on_delete=models.PROTECT, null=True, related_name="patch_jobs")
    psa_case = models.ForeignKey("authority.PsaCase", on_delete=models.PROTECT, null=True, related_name="patch_jobs")
    site = models.ForeignKey("inventory.Site", on_delete=models.PROTECT, null=True, related_name="+")
    scheduled_for = models.DateTimeField()
    reboot_policy = models.CharField(max_length=20, choices=RebootPolicy.choices)
    status = models.CharField(max_length=20, choices=PatchJobStatus.choices)
    patches = models.ManyToManyField(PatchCatalog, blank=True, related_name="+", db_table="patch_job_patches")
    min_severity = models.PositiveSmallIntegerField(choices=Severity.choices, null=True, blank=True)
    batch = models.ForeignKey("engine.Batch", on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    status_reason = models.TextField(blank=True)
    held_until = models.DateTimeField(
        null=True, blank=True, help_text="Approved and due, held until the site's maintenance window opens then."
    )

    class Meta:
        db_table = "patch_jobs"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"patch job {self.pk} ({self.status})"


class PatchInstallJob(JobBase):
    """One asset's part of a patch job (job kind ``patch``): install the exact versions, reboot as
    the policy and the endpoint say, then scan again; only that scan marks a patch installed."""

    patch_job = models.ForeignKey(PatchJob, on_delete=models.PROTECT, related_name="jobs")
    asset = models.ForeignKey("inventory.Asset", on_delete=models.PROTECT, related_name="patch_install_jobs")
    psa_task = models.ForeignKey("authority.PsaTask", on_delete=models.PROTECT, related_name="patch_install_jobs")
    packages = models.JSONField(default=list, help_text="[[product, version], ...] to install.")
    family = models.CharField(max_length=20, default="dpkg", help_text="How the asset installs: dpkg or rpm.")
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta(JobBase.Meta):
        db_table = "patch_install_jobs"
        ordering = ["-created_at"]
        indexes = job_indexes("patch_inst")

    def __str__(self) -> str:
        return f"patch install on {self.asset_id}"


class ScanScheduleStatus(models.TextChoices):
    ACTIVE = "active"
    STOPPED = "stopped"  # by a person, its authority ending, or a kill switch: status_reason says which


class PatchScanSchedule(models.Model):
    """Scans of a site's assets every ``interval_seconds`` under a standing PSA task (the
    monitoring agreement). Each asset has its own moment in the interval, so a site's assets are
    not all scanned at once; the dispatcher (``patching.schedules``) moves ``dispatched_until``."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    site = models.ForeignKey("inventory.Site", on_delete=models.PROTECT, related_name="+")
    psa_task = models.ForeignKey("authority.PsaTask", on_delete=models.PROTECT, related_name="patch_scan_schedules")
    interval_seconds = models.PositiveIntegerField()
    status = models.CharField(max_length=20, choices=ScanScheduleStatus.choices, default=ScanScheduleStatus.ACTIVE)
    status_reason = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField()
    dispatched_until = models.DateTimeField(help_text="Every asset's moment up to this time has been scanned.")
    scans_dispatched = models.PositiveIntegerField(default=0)
    stopped_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "patch_scan_schedules"
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status"], name="patch_scan_schedules_status")]
        constraints = [
            # a site's assets are scanned by one schedule at a time (two requests at once: one 409)
            models.UniqueConstraint(
                fields=["site"], condition=models.Q(status="active"), name="patch_scan_schedules_one_active_per_site"
            )
        ]

    def __str__(self) -> str:
        return f"scan schedule of {self.site_id} every {self.interval_seconds} s ({self.status})"


class MaintenanceWindow(models.Model):
    """When a site's patch jobs may start: on ``days`` (0 Monday … 6 Sunday) from ``start`` for
    ``duration_minutes``, in the site's ``timezone`` (so a window follows its daylight saving time).
    A site with no window takes patch jobs at any time; with several, whenever one is open."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    site = models.ForeignKey("inventory.Site", on_delete=models.PROTECT, related_name="maintenance_windows")
    days = models.JSONField(help_text="Weekdays, 0 Monday … 6 Sunday.")
    start = models.TimeField()
    duration_minutes = models.PositiveIntegerField()
    timezone = models.CharField(max_length=64, help_text="An IANA time zone, e.g. Europe/Berlin.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "maintenance_windows"
        ordering = ["site", "start"]

    def __str__(self) -> str:
        return f"window of {self.site_id}: days {self.days} at {self.start} for {self.duration_minutes} min"


class FindingSource(models.TextChoices):
    SCANNER = "scanner"
    PENTEST = "pentest"  # the seed's "Pen Testing gains remediation feedback": the retest verifies


class FindingStatus(models.TextChoices):
    OPEN = "open"
    AWAITING_VERIFICATION = "awaiting_verification"  # a patch job's re-scan shows the fix installed
    VERIFIED = "verified"
    REOPENED = "reopened"  # the scanner (or the tester's retest) still finds it


# The one table of a finding's allowed moves (patching/findings.py writes them).
FINDING_TRANSITIONS: dict[str, frozenset[str]] = {
    FindingStatus.OPEN: frozenset({FindingStatus.AWAITING_VERIFICATION}),
    FindingStatus.REOPENED: frozenset({FindingStatus.AWAITING_VERIFICATION}),
    FindingStatus.AWAITING_VERIFICATION: frozenset({FindingStatus.VERIFIED, FindingStatus.REOPENED}),
    FindingStatus.VERIFIED: frozenset(),
}


def finding_moves_to(status: str) -> list[str]:
    """The statuses a finding may leave for ``status``: a conditional update's filter."""
    return [source for source, targets in FINDING_TRANSITIONS.items() if status in targets]


class VulnerabilityFinding(models.Model):
    """A scanner's (or a pen tester's) finding on one asset, on the PSA remediation task that
    authorises its fix. A patch job's re-scan that shows the fix asks for verification; only the
    scanner's verification makes it ``verified``."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    asset = models.ForeignKey("inventory.Asset", on_delete=models.PROTECT, related_name="vulnerability_findings")
    site = models.ForeignKey("inventory.Site", on_delete=models.PROTECT, related_name="+")
    cve = models.CharField(max_length=40)
    product = models.CharField(max_length=200)
    fixed_version = models.CharField(max_length=200, blank=True)
    patch_id = models.CharField(max_length=200, blank=True, help_text="The update's id, when no version says it.")
    severity = models.PositiveSmallIntegerField(choices=Severity.choices)
    scanner_ref = models.CharField(max_length=200, help_text="The scanner's own id of the finding.")
    source = models.CharField(max_length=20, choices=FindingSource.choices)
    psa_task = models.ForeignKey("authority.PsaTask", on_delete=models.PROTECT, related_name="vulnerability_findings")
    psa_case = models.ForeignKey("authority.PsaCase", on_delete=models.PROTECT, related_name="vulnerability_findings")
    status = models.CharField(max_length=30, choices=FindingStatus.choices, default=FindingStatus.OPEN)
    catalog_entry = models.ForeignKey(
        PatchCatalog, on_delete=models.PROTECT, null=True, blank=True, related_name="findings"
    )
    fixed_by = models.ForeignKey(
        PatchJob, on_delete=models.PROTECT, null=True, blank=True, related_name="findings", help_text="The patch job."
    )
    installed_version = models.CharField(max_length=200, blank=True, help_text="What the re-scan found installed.")
    reported_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    fix_detected_at = models.DateTimeField(null=True, blank=True)
    verified_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    verified_at = models.DateTimeField(null=True, blank=True, help_text="When the last verification came.")
    verification_details = models.TextField(blank=True)

    class Meta:
        db_table = "vulnerability_findings"
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["asset", "status"], name="vuln_findings_asset_status"),
            models.Index(fields=["status", "site"], name="vuln_findings_status_site"),
            models.Index(fields=["cve"], name="vuln_findings_cve"),
        ]

    def __str__(self) -> str:
        return f"{self.cve} on {self.asset_id} ({self.status})"
