import uuid

from django.conf import settings
from django.db import models

from rmm.engine.states import JobStatus
from rmm.inventory.models import Agent, Asset, Site


def job_indexes(prefix: str) -> list[models.Index]:
    """Every job kind's indexes, named ``<prefix>_ring_idx`` and so on. :class:`JobBase` names them
    after the app and model; a kind whose names would pass 30 characters (Django's limit) gives its
    Meta ``indexes = job_indexes("<short prefix>")``."""
    return [
        # A batch's progress, and whether a ring has finished, are read through this index.
        models.Index(fields=["batch", "ring", "status"], name=f"{prefix}_ring_idx"),
        # The job list sorted by requester reads each requester's first jobs in order through it
        # (rmm.engine.services.listing): the username is in another table.
        models.Index(fields=["requested_by", "created_at", "id"], name=f"{prefix}_req_idx"),
        # Jobs of one status, newest first (the dashboard's failures, the job list's status filter):
        # a rare status is read directly instead of filtered out of every new job.
        models.Index(fields=["status", "created_at", "id"], name=f"{prefix}_status_idx"),
        # The newest jobs first, and on PostgreSQL the dashboard's counts by status over 7 days from
        # the index alone (status and site included; other databases ignore ``include``).
        models.Index(fields=["created_at"], include=["status", "site"], name=f"{prefix}_time_idx"),
    ]


class JobBase(models.Model):
    """What every kind of job shares: status, requester, site and the approval decision.

    Domain apps subclass it and add their seed fields; the engine drives the status.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Indexed by the status index below.
    status = models.CharField(max_length=20, choices=JobStatus.choices)
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="+")
    # Indexed by the requester index below, which also gives each requester's jobs in order.
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    # Indexed by the time index below.
    created_at = models.DateTimeField(auto_now_add=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    status_reason = models.TextField(blank=True)
    batch = models.ForeignKey(
        "engine.Batch", on_delete=models.PROTECT, null=True, blank=True, related_name="+", db_index=False
    )
    ring = models.PositiveIntegerField(null=True, blank=True, help_text="Its ring in the batch (0: the canary).")

    class Meta:
        abstract = True
        indexes = job_indexes("%(app_label)s_%(class)s")


class BatchStatus(models.TextChoices):
    AWAITING_APPROVAL = "awaiting_approval"
    RUNNING = "running"
    HALTED = "halted"
    COMPLETED = "completed"
    ABORTED = "aborted"


class Batch(models.Model):
    """The jobs of one request over many assets, released ring by ring (rmm.engine.services.batches)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job_kind = models.CharField(max_length=50)
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="+")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    status = models.CharField(max_length=20, choices=BatchStatus.choices)
    halt_reason = models.TextField(blank=True)
    plan = models.JSONField(help_text="canary, ring_size or ring_percent, growth, interval_seconds, threshold.")
    timed = models.BooleanField(
        default=False, help_text="No plan was given: released in RMM_WAVE_SIZE waves on the clock, as before batches."
    )
    ring_sizes = models.JSONField(help_text="How many jobs each ring holds, the canary first.")
    released_rings = models.PositiveIntegerField(default=0)
    ring_released_at = models.DateTimeField(null=True, blank=True)
    held_until = models.DateTimeField(
        null=True, blank=True, help_text="Its next ring is due, but its kind's window is closed until then."
    )
    results = models.PositiveIntegerField(default=0, help_text="Jobs finished with a result (not aborted).")
    failed = models.PositiveIntegerField(default=0, help_text="Of them, failed, timed out or lost.")

    class Meta:
        indexes = [models.Index(fields=["status"], name="batch_status_idx")]

    def __str__(self) -> str:
        return f"batch {self.pk} ({self.status})"


class Instruction(models.Model):
    """One asset, one fully rendered step, signed by the server and leased by its agent."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job_kind = models.CharField(max_length=50)
    job_id = models.UUIDField(db_index=True)
    step = models.PositiveIntegerField(default=0)
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="+")
    asset = models.ForeignKey(Asset, on_delete=models.PROTECT, related_name="instructions")
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="instructions")
    interpreter = models.CharField(max_length=20)
    content = models.TextField()
    content_sha256 = models.CharField(max_length=64)
    arguments = models.JSONField(default=list)
    timeout_seconds = models.PositiveIntegerField()
    privileged = models.BooleanField(default=False)
    psa_case_id = models.UUIDField(null=True, blank=True, db_index=True, help_text="The authority it runs on.")
    psa_task_id = models.UUIDField(null=True, blank=True, db_index=True)
    issued_at = models.DateTimeField()
    release_at = models.DateTimeField(help_text="Not leased before this time (waves of a large job).")
    not_after = models.DateTimeField()
    payload = models.TextField(help_text="The exact canonical JSON that was signed.")
    signature = models.CharField(max_length=200)
    key_id = models.CharField(max_length=16, blank=True, help_text="The instruction-signing key that signed it.")
    status = models.CharField(max_length=20, choices=JobStatus.choices, default=JobStatus.QUEUED)
    leased_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=20, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    result_hash = models.CharField(max_length=64, blank=True)
    reason = models.TextField(blank=True)
    containment = models.JSONField(
        null=True,
        blank=True,
        help_text="What ended the instruction's processes on the endpoint, and which had to be killed "
        '(the result\'s "containment"; null from agents that do not report it).',
    )
    abort_reason = models.TextField(
        blank=True, help_text="Set while running: its agent kills it at the next heartbeat."
    )
    artefacts = models.JSONField(
        default=list,
        blank=True,
        help_text="The files its step names ({name, sha256, size, blob}): what its agent may fetch while it runs.",
    )
    structured = models.JSONField(
        null=True,
        blank=True,
        help_text="The JSON document the step's script wrote (the result's \"structured\"; docs/agent.md).",
    )

    class Meta:
        indexes = [
            models.Index(fields=["agent", "status", "issued_at"], name="instr_lease_idx"),
            models.Index(fields=["status", "lease_expires_at"], name="instr_sweep_idx"),
            models.Index(fields=["status", "site"], name="instr_site_status_idx"),
            models.Index(fields=["job_kind", "job_id", "step"], name="instr_job_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.job_kind}:{self.job_id}#{self.step} on {self.asset_id}"


class KillSwitchScope(models.TextChoices):
    GLOBAL = "global"
    SITE = "site"
    ASSET = "asset"


class KillSwitch(models.Model):
    """While engaged, nothing new runs in its scope and running work there is aborted."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    scope = models.CharField(max_length=10, choices=KillSwitchScope.choices)
    site = models.ForeignKey(Site, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    asset = models.ForeignKey(Asset, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    reason = models.TextField()
    engaged_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    engaged_at = models.DateTimeField(auto_now_add=True)
    released_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    released_at = models.DateTimeField(null=True, blank=True, db_index=True)
    release_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-engaged_at"]
        verbose_name_plural = "kill switches"
        constraints = [
            models.CheckConstraint(
                name="kill_switch_target_matches_scope",
                condition=(
                    models.Q(scope="global", site__isnull=True, asset__isnull=True)
                    | models.Q(scope="site", site__isnull=False, asset__isnull=True)
                    | models.Q(scope="asset", asset__isnull=False)
                ),
            )
        ]

    def __str__(self) -> str:
        state = "engaged" if self.engaged else "released"
        return f"kill switch on {self.target_label} ({state})"

    @property
    def engaged(self) -> bool:
        return self.released_at is None

    def covers(self, site_id, asset_id) -> bool:
        """Whether this switch's scope takes in that asset (engaged or not)."""
        return (
            self.scope == KillSwitchScope.GLOBAL
            or (self.scope == KillSwitchScope.SITE and self.site_id == site_id)
            or (self.scope == KillSwitchScope.ASSET and self.asset_id == asset_id)
        )

    @property
    def target_label(self) -> str:
        if self.scope == KillSwitchScope.SITE:
            return f"site {self.site.name}"
        if self.scope == KillSwitchScope.ASSET:
            return f"asset {self.asset.hostname}"
        return "everything"
