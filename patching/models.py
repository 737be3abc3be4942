"""Seed C, patch management: the patch catalog (what fixes exist, from imported advisories) and each
asset's patch state. Patch jobs, scans and scanner findings come in later parts of issue 16."""

import uuid

from django.db import models


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
