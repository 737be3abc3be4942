"""Seed E, software deployment: the packages that may be installed, each an approved artefact whose
bytes live in the content-addressed store under their sha256."""

import uuid

from django.db import models

from rmm.artefacts.models import ArtefactVersion
from rmm.engine.models import JobBase, job_indexes


class InstallerType(models.TextChoices):
    DEB = "deb"
    RPM = "rpm"
    MSI = "msi"
    EXE = "exe"
    SCRIPT = "script"


class SoftwarePackage(ArtefactVersion):
    """Seed E ``software_packages``: one registered installer, four-eyes approved before any
    deployment may use it. ``version`` is the software's own version ("24.08"); ``revision``
    numbers the registrations of one package name (an artefact's versions, v1, v2, ...)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200, db_index=True)
    version = models.CharField(max_length=100, help_text="The software's own version, e.g. 24.08.")
    revision = models.PositiveIntegerField(help_text="This registration's number among the package's.")
    installer_type = models.CharField(max_length=10, choices=InstallerType.choices)
    interpreter = models.CharField(
        max_length=12,
        blank=True,
        choices=[("sh", "sh"), ("powershell", "powershell")],
        help_text="What runs a script package (sh on Linux, PowerShell on Windows); empty for the others.",
    )
    silent_args = models.TextField(blank=True, help_text="Arguments for an unattended install.")
    detection = models.JSONField(default=dict, blank=True, help_text="How to tell it is installed.")
    uninstall_args = models.TextField(blank=True, help_text="Arguments for an unattended uninstall.")
    installer_uri = models.CharField(
        max_length=2000, blank=True, help_text="Where it was downloaded from; empty when uploaded."
    )
    hash = models.CharField(max_length=64, help_text="sha256 of the installer's bytes.")
    size = models.PositiveBigIntegerField()
    filename = models.CharField(max_length=255, help_text="The installer's file name on the endpoint.")
    blob = models.CharField(max_length=300, help_text="Its name in the blob store.")

    class Meta:
        db_table = "software_packages"
        ordering = ["name", "-revision"]
        constraints = [models.UniqueConstraint(fields=["name", "revision"], name="software_package_revision_unique")]

    def __str__(self) -> str:
        return f"{self.name} {self.version} (v{self.revision})"


class DeploymentAction(models.TextChoices):
    INSTALL = "install"
    # the rollback: its own job, under the same kind of authority, proven by a detection read
    UNINSTALL = "uninstall"


class DeploymentJob(JobBase):
    """Seed E ``deployment_jobs``: install one approved package on one asset, on a PSA task's
    authority (its ``psa_case_id`` is the task's case). ``executed_at`` is when the install began
    on the endpoint; the engine stamps it as the job starts running."""

    package = models.ForeignKey(SoftwarePackage, on_delete=models.PROTECT, related_name="jobs")
    action = models.CharField(max_length=10, choices=DeploymentAction.choices, default=DeploymentAction.INSTALL)
    asset = models.ForeignKey("inventory.Asset", on_delete=models.PROTECT, related_name="deployment_jobs")
    psa_task = models.ForeignKey("authority.PsaTask", on_delete=models.PROTECT, related_name="deployment_jobs")
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta(JobBase.Meta):
        db_table = "deployment_jobs"
        ordering = ["-created_at"]
        indexes = job_indexes("deploy_job")

    def __str__(self) -> str:
        return f"{self.package} on {self.asset}"

    @property
    def executed_at(self):
        return self.started_at


class InstalledSoftware(models.Model):
    """What a deployment's detection read last found on an asset, per package name: actual state,
    written only by the engine from an agent's structured result (never from an install's exit
    code), with the evidence record of that read."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    asset = models.ForeignKey("inventory.Asset", on_delete=models.PROTECT, related_name="installed_software")
    name = models.CharField(max_length=200, help_text="The package's name.")
    package = models.ForeignKey(
        SoftwarePackage, on_delete=models.PROTECT, related_name="+", help_text="The registration whose rule read it."
    )
    installed = models.BooleanField()
    version = models.CharField(max_length=200, blank=True, help_text="The version the read found, if installed.")
    read_at = models.DateTimeField()
    deployment_job = models.ForeignKey(DeploymentJob, on_delete=models.PROTECT, related_name="+")
    evidence = models.ForeignKey(
        "evidence.RmmEvidence", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )

    class Meta:
        db_table = "asset_software"
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["asset", "name"], name="asset_software_unique")]

    def __str__(self) -> str:
        return f"{self.name} on {self.asset_id}: {'installed ' + self.version if self.installed else 'absent'}"
