import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from rmm.authority.models import PsaCase, PsaTask
from rmm.inventory.models import Asset, Site


class RmmEvidence(models.Model):
    """Seed G: a record of what ran and what came out, its blob stored by content hash.

    Rows are never updated, and deleted only by a retention run that first leaves an
    :class:`EvidenceDisposal` (database triggers, migration 0003).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    asset = models.ForeignKey(Asset, on_delete=models.PROTECT, null=True, blank=True, related_name="evidence")
    # The site it belongs to (the asset's); empty for history anchors, which belong to no site.
    site = models.ForeignKey(Site, on_delete=models.PROTECT, null=True, blank=True, related_name="evidence")
    evidence_type = models.CharField(max_length=30, db_index=True)  # evidence/types.py
    related_entity = models.CharField(max_length=50)
    related_id = models.UUIDField(db_index=True)
    # The upstream authority the work ran under, so that a PSA case can collect its evidence.
    psa_case = models.ForeignKey(PsaCase, on_delete=models.PROTECT, null=True, blank=True, related_name="evidence")
    psa_task = models.ForeignKey(PsaTask, on_delete=models.PROTECT, null=True, blank=True, related_name="evidence")
    storage_uri = models.CharField(max_length=500)
    hash = models.CharField(max_length=64, db_index=True)
    captured_at = models.DateTimeField()
    # The history event that recorded it: exports prove each item through the chain from here.
    history_sequence = models.BigIntegerField(null=True, blank=True, unique=True)

    class Meta:
        verbose_name = "evidence"
        verbose_name_plural = "evidence"
        ordering = ["-captured_at"]
        indexes = [
            models.Index(fields=["related_entity", "related_id"], name="evidence_related_idx"),
            models.Index(fields=["site", "captured_at"], name="evidence_site_time_idx"),
            models.Index(fields=["evidence_type", "captured_at"], name="evidence_type_time_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.evidence_type} {self.hash[:12]}"


class ExportStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class EvidenceExport(models.Model):
    """A compliance export: the filters asked for, its progress and the bundle it produced."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    filters = models.JSONField(default=dict)
    # The sites the bundle covers; downloading it needs them all still visible to the caller.
    site_ids = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=10, choices=ExportStatus.choices, default=ExportStatus.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0)
    item_count = models.PositiveIntegerField(default=0)
    file_name = models.CharField(max_length=300, blank=True)
    file_hash = models.CharField(max_length=64, blank=True)
    file_size = models.BigIntegerField(default=0)
    anchor_sequence = models.BigIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    requested_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The last sign of life: (re)queued, taken by a builder, or progress written. A running export
    # silent for RMM_EXPORT_STALE_SECONDS lost its builder (exports.sweep_exports).
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)  # builds started

    class Meta:
        ordering = ["-requested_at"]

    def __str__(self) -> str:
        return f"export {self.pk} ({self.status})"


class LegalHold(models.Model):
    """While active, retention deletes nothing of its site or PSA case."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    site = models.ForeignKey(Site, on_delete=models.PROTECT, null=True, blank=True, related_name="legal_holds")
    psa_case = models.ForeignKey(PsaCase, on_delete=models.PROTECT, null=True, blank=True, related_name="legal_holds")
    reason = models.TextField()
    placed_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    placed_at = models.DateTimeField(auto_now_add=True)
    released_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    released_at = models.DateTimeField(null=True, blank=True)
    release_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-placed_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(site__isnull=False, psa_case__isnull=True) | Q(site__isnull=True, psa_case__isnull=False),
                name="legal_hold_site_xor_case",
            )
        ]

    def __str__(self) -> str:
        state = "released" if self.released_at else "active"
        return f"legal hold on {self.target_label} ({state})"

    @property
    def target_label(self) -> str:
        return f"site {self.site.name}" if self.site_id else f"PSA case {self.psa_case_id}"


class RetentionRun(models.Model):
    """One pass of the retention policy: what it deleted, what holds kept."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    actor = models.CharField(max_length=200)
    policy = models.JSONField(default=dict)
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    deleted_count = models.PositiveIntegerField(default=0)
    held_count = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"retention run {self.started_at:%Y-%m-%d %H:%M} ({self.deleted_count} deleted)"


class EvidenceDisposal(models.Model):
    """The tombstone a retention run leaves before it deletes an evidence record.

    The database lets an evidence row be deleted only when its tombstone exists, and refuses
    any change to tombstones; the deletion is in the history too, with the hash.
    """

    evidence_id = models.UUIDField(primary_key=True)
    evidence_type = models.CharField(max_length=30)
    hash = models.CharField(max_length=64)
    storage_uri = models.CharField(max_length=500)
    related_entity = models.CharField(max_length=50)
    related_id = models.UUIDField()
    asset_id = models.UUIDField(null=True, blank=True)
    site_id = models.UUIDField(null=True, blank=True, db_index=True)
    psa_case_id = models.UUIDField(null=True, blank=True, db_index=True)
    captured_at = models.DateTimeField()
    recorded_sequence = models.BigIntegerField(null=True, blank=True)
    retention_run = models.ForeignKey(RetentionRun, on_delete=models.PROTECT, related_name="disposals")
    disposed_at = models.DateTimeField()

    class Meta:
        ordering = ["-disposed_at"]

    def __str__(self) -> str:
        return f"disposed {self.evidence_type} {self.hash[:12]}"
