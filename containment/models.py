"""EDR containment (issue 19, workflow "EDR → containment"): the EDR's request to isolate an
endpoint's network, or to release it, on a PSA task's authority. The job is the intent; what the
endpoint reported is the asset's ``containment`` (rmm.inventory), written only from its state read."""

from django.db import models

from rmm.engine.models import JobBase, job_indexes


class ContainmentAction(models.TextChoices):
    ISOLATE = "isolate"
    RELEASE = "release"


class ContainmentState(models.TextChoices):
    """What ``Asset.containment`` says: never contained, contained now, released since."""

    NONE = "none"
    CONTAINED = "contained"
    RELEASED = "released"


class ContainmentJob(JobBase):
    """``containment_jobs``: isolate or release one asset, with the EDR's reason, on a PSA task's
    authority (its ``psa_case_id`` is the task's case). ``server_endpoints`` are the RMM server's
    addresses and ports, resolved when the job was requested (the endpoint needs no DNS to reach
    them); ``dns`` is whether the agent's server name still needs it (a name, not an address)."""

    asset = models.ForeignKey("inventory.Asset", on_delete=models.PROTECT, related_name="containment_jobs")
    action = models.CharField(max_length=10, choices=ContainmentAction.choices)
    reason = models.TextField()
    psa_task = models.ForeignKey("authority.PsaTask", on_delete=models.PROTECT, related_name="containment_jobs")
    server_endpoints = models.JSONField(default=list, help_text="[[address, port], ...] the endpoint may still reach.")
    dns = models.BooleanField(default=False, help_text="DNS stays open: the agent's server is a name.")
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta(JobBase.Meta):
        db_table = "containment_jobs"
        ordering = ["-created_at"]
        indexes = job_indexes("contain_job")

    def __str__(self) -> str:
        return f"{self.action} {self.asset}"

    @property
    def psa_case_id(self):
        return self.psa_task.case_id
