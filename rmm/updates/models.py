from django.db import models

from rmm.authority.models import PsaTask
from rmm.engine.models import JobBase
from rmm.inventory.models import Asset


class UpdateJob(JobBase):
    """Update one asset's agent to a published, signed release (rmm.updates.releases)."""

    asset = models.ForeignKey(Asset, on_delete=models.PROTECT, related_name="+")
    psa_task = models.ForeignKey(PsaTask, on_delete=models.PROTECT, related_name="+")
    version = models.CharField(max_length=50)
    sha256 = models.CharField(max_length=64)
    size = models.PositiveBigIntegerField()
    manifest = models.JSONField(help_text="The release manifest as signed by a release key.")
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta(JobBase.Meta):
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"agent {self.version} on {self.asset}"
