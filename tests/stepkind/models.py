from django.db import models

from rmm.authority.models import PsaTask
from rmm.engine.models import JobBase
from rmm.inventory.models import Asset


class StepJob(JobBase):
    """A test-only job of ``steps`` shell steps on one asset; step ``fail_step`` (0-based) exits 1,
    and its ``on_failure`` policy says what follows (a cleanup step is rendered for "cleanup")."""

    asset = models.ForeignKey(Asset, on_delete=models.PROTECT, related_name="+")
    psa_task = models.ForeignKey(PsaTask, on_delete=models.PROTECT, related_name="+")
    steps = models.PositiveSmallIntegerField(default=3)
    fail_step = models.PositiveSmallIntegerField(null=True, blank=True)
    on_failure = models.CharField(max_length=10, default="stop")
    # A step that names an artefact: {"step", "name", "sha256", "size", "blob", "marker"}; the
    # step prints the artefact's sha256 as the agent gave it, and touches "marker" when it runs.
    artefact = models.JSONField(null=True, blank=True)
    # Step 0 writes {"found": found} as its structured result; the kind fails a step that found any.
    found = models.PositiveSmallIntegerField(null=True, blank=True)
    # This step (0-based) asks for a reboot ("now") once it succeeded.
    reboot_step = models.PositiveSmallIntegerField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta(JobBase.Meta):
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.steps} steps on {self.asset}"


class StepResult(models.Model):
    """What the agent reported for one step."""

    job = models.ForeignKey(StepJob, on_delete=models.PROTECT, related_name="results")
    step = models.PositiveSmallIntegerField()
    exit_code = models.IntegerField(null=True)
    stdout = models.TextField()
    hash = models.CharField(max_length=64)
    structured = models.JSONField(null=True)

    def __str__(self) -> str:
        return f"step {self.step} of {self.job}"
