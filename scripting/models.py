import uuid

from django.db import models

from rmm.artefacts.models import ArtefactVersion
from rmm.authority.models import PsaTask
from rmm.engine.models import JobBase
from rmm.inventory.models import Asset


class Language(models.TextChoices):
    SH = "sh"
    BASH = "bash"
    PYTHON = "python"
    POWERSHELL = "powershell"


class Script(ArtefactVersion):
    """Seed D ``scripts``: one immutable version of a controlled artefact.

    New content under the same name makes a new row (the next version) with its own sha256.
    A version is usable only once someone other than its author approved it.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200, db_index=True)
    version = models.PositiveIntegerField()
    language = models.CharField(max_length=20, choices=Language.choices)
    content = models.TextField()
    sha256 = models.CharField(max_length=64)
    requires_approval = models.BooleanField(default=False, help_text="Each job of this version needs approval too.")
    privileged = models.BooleanField(
        default=False, help_text="Runs as root/SYSTEM; approving it needs the privileged-approval permission."
    )
    timeout_seconds = models.PositiveIntegerField(default=300)

    class Meta:
        ordering = ["name", "-version"]
        constraints = [models.UniqueConstraint(fields=["name", "version"], name="script_name_version_unique")]
        permissions = [("approve_privileged", "May approve script versions that run privileged")]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


class ScriptJob(JobBase):
    """Seed D ``script_jobs``: run one approved script version on one asset, on a PSA task's authority."""

    script = models.ForeignKey(Script, on_delete=models.PROTECT, related_name="jobs")
    asset = models.ForeignKey(Asset, on_delete=models.PROTECT, related_name="script_jobs")
    psa_task = models.ForeignKey(PsaTask, on_delete=models.PROTECT, related_name="script_jobs")
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta(JobBase.Meta):
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.script} on {self.asset}"


class ScriptResult(models.Model):
    """Seed D ``script_results``: what came back, with the hash the agent computed (rechecked)."""

    job = models.OneToOneField(ScriptJob, on_delete=models.PROTECT, primary_key=True, related_name="result")
    # Display text; where ``*_escaped``, reversibly escaped bytes (rmm/text.py, docs/evidence.md).
    stdout = models.TextField(blank=True)
    stderr = models.TextField(blank=True)
    stdout_escaped = models.BooleanField(default=False)
    stderr_escaped = models.BooleanField(default=False)
    exit_code = models.IntegerField(null=True, blank=True)
    hash = models.CharField(max_length=64)
    stdout_truncated = models.BooleanField(default=False)
    stderr_truncated = models.BooleanField(default=False)
    structured = models.JSONField(
        null=True, blank=True, help_text="The JSON document the script wrote (docs/agent.md, Structured results)."
    )
    received_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"result of {self.job_id}: exit {self.exit_code}"
