import uuid

from django.db import models

from rmm.inventory.models import Asset


class EvidenceType(models.TextChoices):
    SCRIPT_RESULT = "script_result"
    PATCH_RESULT = "patch_result"
    DEPLOYMENT_RESULT = "deployment_result"
    CONFIG_ENFORCEMENT = "config_enforcement"
    DRIFT_REPORT = "drift_report"
    CONTAINMENT_STATE = "containment_state"
    SESSION_RECORDING = "session_recording"
    HISTORY_ANCHOR = "history_anchor"


class RmmEvidence(models.Model):
    """Seed G: a record of what ran and what came out, its blob stored by content hash."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    asset = models.ForeignKey(Asset, on_delete=models.PROTECT, null=True, blank=True, related_name="evidence")
    evidence_type = models.CharField(max_length=30, choices=EvidenceType.choices, db_index=True)
    related_entity = models.CharField(max_length=50)
    related_id = models.UUIDField(db_index=True)
    storage_uri = models.CharField(max_length=500)
    hash = models.CharField(max_length=64, db_index=True)
    captured_at = models.DateTimeField()

    class Meta:
        verbose_name = "evidence"
        verbose_name_plural = "evidence"
        ordering = ["-captured_at"]
        indexes = [models.Index(fields=["related_entity", "related_id"], name="evidence_related_idx")]

    def __str__(self) -> str:
        return f"{self.evidence_type} {self.hash[:12]}"
