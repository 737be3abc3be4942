"""Seed B, desired configuration: profiles, their revisions and items (intent, not execution), and
the config key definitions that say how a key is read and set on an endpoint."""

import uuid

from django.conf import settings
from django.db import models

from rmm.artefacts.models import ArtefactVersion
from rmm.engine.models import JobBase, job_indexes
from scripting.models import Script


class Platform(models.TextChoices):
    LINUX = "linux"
    WINDOWS = "windows"


class ValueType(models.TextChoices):
    STRING = "string"
    INTEGER = "integer"
    BOOLEAN = "boolean"


class Comparison(models.TextChoices):
    EQUALS = "equals"
    NOT_EQUALS = "not_equals"
    REGEX = "regex"
    AT_LEAST = "at_least"
    AT_MOST = "at_most"
    CONTAINS = "contains"
    ABSENT = "absent"


class EnforcementMode(models.TextChoices):
    AUDIT = "audit"
    ENFORCE = "enforce"


class ConfigKey(ArtefactVersion):
    """One immutable version of a config key definition, an artefact kind (``config_key``).

    ``content_sha256`` covers the canonical JSON of the definition with both scripts' sha256
    (:func:`profiles.services.definition_of`): approving this version approves exactly those
    scripts' content for this key. It is usable in a profile only when it and its scripts are
    approved.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200, db_index=True, help_text="e.g. linux.file_line")
    version = models.PositiveIntegerField()
    description = models.TextField(blank=True)
    platform = models.CharField(max_length=20, choices=Platform.choices)
    value_type = models.CharField(max_length=20, choices=ValueType.choices)
    comparisons = models.JSONField(help_text="The comparisons an item of this key may use.")
    parameters = models.JSONField(
        default=list, help_text='[{"name", "description", "required"}]: given to its scripts as RMM_PARAM_<NAME>.'
    )
    read_script = models.ForeignKey(Script, on_delete=models.PROTECT, related_name="+")
    set_script = models.ForeignKey(Script, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    content_sha256 = models.CharField(max_length=64)

    class Meta:
        db_table = "config_keys"
        ordering = ["name", "-version"]
        constraints = [models.UniqueConstraint(fields=["name", "version"], name="config_key_name_version_unique")]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


class ConfigurationProfile(models.Model):
    """Seed B ``configuration_profiles``: a named desired state; its items live in revisions."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200, unique=True)
    profile_type = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    current_revision = models.ForeignKey(
        "ConfigurationProfileRevision", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )

    class Meta:
        db_table = "configuration_profiles"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def items(self):
        """The current revision's items, in order."""
        return self.current_revision.items.all() if self.current_revision_id else ConfigurationItem.objects.none()


class ConfigurationProfileRevision(models.Model):
    """One revision of a profile's items. Items are never rewritten: a change makes a new revision,
    so what an asset was measured against stays as it was."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    profile = models.ForeignKey(ConfigurationProfile, on_delete=models.PROTECT, related_name="revisions")
    revision = models.PositiveIntegerField()
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "configuration_profile_revisions"
        ordering = ["profile", "-revision"]
        constraints = [models.UniqueConstraint(fields=["profile", "revision"], name="profile_revision_unique")]

    def __str__(self) -> str:
        return f"{self.profile.name} r{self.revision}"


class ConfigurationItem(models.Model):
    """Seed B ``configuration_items``: one desired value of one key version, in one revision."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    revision = models.ForeignKey(ConfigurationProfileRevision, on_delete=models.PROTECT, related_name="items")
    position = models.PositiveIntegerField(help_text="Its place in the revision's item list.")
    config_key = models.ForeignKey(ConfigKey, on_delete=models.PROTECT, related_name="items")
    parameters = models.JSONField(default=dict)
    desired_value = models.TextField(blank=True)
    comparison = models.CharField(max_length=20, choices=Comparison.choices)
    enforcement_mode = models.CharField(max_length=20, choices=EnforcementMode.choices)

    class Meta:
        db_table = "configuration_items"
        ordering = ["revision", "position"]
        constraints = [models.UniqueConstraint(fields=["revision", "position"], name="configuration_item_position")]

    def __str__(self) -> str:
        return f"{self.config_key.name} {self.comparison} {self.desired_value!r}"


class AssignmentStatus(models.TextChoices):
    # a profile with enforce-mode items, or its new revision, waits for a second person
    AWAITING_APPROVAL = "awaiting_approval", "awaiting approval"
    ACTIVE = "active", "active"
    REJECTED = "rejected", "rejected"
    # its PSA task expired or was withdrawn, or it was withdrawn itself: no more audits
    STOPPED = "stopped", "stopped"


class AssetConfigurationProfile(models.Model):
    """Seed B ``asset_configuration_profiles``: a profile assigned to one asset or to a whole site,
    under the PSA task (the compliance control's) that authorises its audits and enforcement.

    ``approved_revision`` is the profile revision a second person approved for enforcement; drift
    on enforce-mode items is enforced only while it is the profile's current revision."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    profile = models.ForeignKey(ConfigurationProfile, on_delete=models.PROTECT, related_name="assignments")
    asset = models.ForeignKey(
        "inventory.Asset", on_delete=models.PROTECT, null=True, blank=True, related_name="configuration_profiles"
    )
    site = models.ForeignKey(
        "inventory.Site", on_delete=models.PROTECT, null=True, blank=True, related_name="configuration_profiles"
    )
    psa_task = models.ForeignKey("authority.PsaTask", on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=20, choices=AssignmentStatus.choices)
    status_reason = models.TextField(blank=True)
    approved_revision = models.ForeignKey(
        ConfigurationProfileRevision, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    audit_interval_seconds = models.PositiveIntegerField(default=86400)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "asset_configuration_profiles"
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(asset__isnull=False, site__isnull=True) | models.Q(asset__isnull=True, site__isnull=False)
                ),
                name="assignment_asset_or_site",
            )
        ]

    def __str__(self) -> str:
        return f"{self.profile.name} → {self.asset or self.site}"


# --- audits: actual state, written only from what agents report -----------------------------------


class ConfigurationAuditJob(JobBase):
    """One audit of one assignment's profile on one asset: every item of the revision it names, read
    in one instruction (job kind ``profile_audit``, :mod:`profiles.kind`). Audits change nothing."""

    assignment = models.ForeignKey(AssetConfigurationProfile, on_delete=models.PROTECT, related_name="audit_jobs")
    profile_revision = models.ForeignKey(ConfigurationProfileRevision, on_delete=models.PROTECT, related_name="+")
    asset = models.ForeignKey("inventory.Asset", on_delete=models.PROTECT, related_name="configuration_audit_jobs")
    psa_task = models.ForeignKey("authority.PsaTask", on_delete=models.PROTECT, related_name="+")
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta(JobBase.Meta):
        db_table = "configuration_audit_jobs"
        ordering = ["-created_at"]
        indexes = [
            # JobBase's indexes, named short enough for every database
            *job_indexes("audit_job"),
            # an assignment's newest audit (the console's assignment lists)
            models.Index(fields=["assignment", "created_at"], name="audit_job_assign_time_idx"),
        ]

    def __str__(self) -> str:
        return f"audit of {self.assignment.profile.name} on {self.asset}"


class ConfigurationEnforcementJob(JobBase):
    """One enforcement of one drifted enforce-mode item on one asset (job kind ``profile_enforce``,
    :mod:`profiles.kind`): its key's set script with the item's parameters and desired value, then
    a fresh read in the same instruction. Created from an audit that found the item non-compliant,
    on the assignment's PSA task and under the assignment's approval (:mod:`profiles.enforcement`).
    The item is compliant again only when the re-read says so."""

    assignment = models.ForeignKey(AssetConfigurationProfile, on_delete=models.PROTECT, related_name="enforcement_jobs")
    profile_revision = models.ForeignKey(ConfigurationProfileRevision, on_delete=models.PROTECT, related_name="+")
    item = models.ForeignKey(ConfigurationItem, on_delete=models.PROTECT, related_name="enforcement_jobs")
    asset = models.ForeignKey(
        "inventory.Asset", on_delete=models.PROTECT, related_name="configuration_enforcement_jobs"
    )
    psa_task = models.ForeignKey("authority.PsaTask", on_delete=models.PROTECT, related_name="+")
    audit_job = models.ForeignKey(
        ConfigurationAuditJob,
        on_delete=models.PROTECT,
        related_name="enforcement_jobs",
        help_text="The audit that found the drift.",
    )
    # the before value: the observation that triggered it, as it was then
    before_value = models.TextField(null=True, blank=True)
    before_state = models.CharField(max_length=20)
    before_observed_at = models.DateTimeField()
    before_evidence = models.ForeignKey(
        "evidence.RmmEvidence",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The audit's evidence record that read the before value.",
    )
    # the after value: what the re-read found ("" and null until it reported)
    after_value = models.TextField(null=True, blank=True)
    after_state = models.CharField(max_length=20, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta(JobBase.Meta):
        db_table = "configuration_enforcement_jobs"
        ordering = ["-created_at"]
        indexes = [
            *job_indexes("enforce_job"),
            models.Index(fields=["asset", "item", "status"], name="enforce_job_item_idx"),
        ]

    def __str__(self) -> str:
        return f"enforcement of {self.item} on {self.asset}"


class ObservationState(models.TextChoices):
    COMPLIANT = "compliant"
    NON_COMPLIANT = "non_compliant"
    # the read failed or its output could not be read: nothing was compared
    ERROR = "error"


class ConfigurationObservation(models.Model):
    """Actual state: what the newest audit read of one item on one asset, one row per (asset, item)
    (an item belongs to one profile revision), updated by each audit. Written only from agents'
    reports (Law 2); desired state stays in ``configuration_items``."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    asset = models.ForeignKey("inventory.Asset", on_delete=models.PROTECT, related_name="configuration_observations")
    item = models.ForeignKey(ConfigurationItem, on_delete=models.PROTECT, related_name="observations")
    profile_revision = models.ForeignKey(ConfigurationProfileRevision, on_delete=models.PROTECT, related_name="+")
    observed_value = models.TextField(
        null=True, blank=True, help_text="What the read script printed (display text); null when absent or an error."
    )
    observed_at = models.DateTimeField()
    compliant = models.BooleanField(null=True, blank=True, help_text="Null when the read failed.")
    state = models.CharField(max_length=20, choices=ObservationState.choices)
    # the last state that was not an error ("" before the first): drift is a change of it
    known_state = models.CharField(max_length=20, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    reason = models.TextField(blank=True, help_text="Why the state is an error, or what was compared.")
    # the job that read it: an audit, or an enforcement's re-read (exactly one)
    audit_job = models.ForeignKey(
        ConfigurationAuditJob, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    enforcement_job = models.ForeignKey(
        ConfigurationEnforcementJob, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    evidence = models.ForeignKey(
        "evidence.RmmEvidence",
        on_delete=models.SET_NULL,  # a retention run may delete evidence; the observation stays
        null=True,
        blank=True,
        related_name="+",
        help_text="The evidence record of the instruction that read it (an audit's or an enforcement's).",
    )

    class Meta:
        db_table = "configuration_observations"
        ordering = ["asset", "item"]
        # each intake recounts its asset's readings of a revision from this index alone (profiles.counts)
        indexes = [models.Index(fields=["profile_revision", "asset", "state"], name="observation_rev_asset_state")]
        constraints = [
            models.UniqueConstraint(fields=["asset", "item"], name="observation_asset_item"),
            models.CheckConstraint(
                condition=models.Q(audit_job__isnull=True) ^ models.Q(enforcement_job__isnull=True),
                name="observation_read_by_one_job",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.item} on {self.asset_id}: {self.state}"


class ComplianceCount(models.Model):
    """How many readings of one profile revision on one asset comply, drifted or could not be
    made: derived from ``configuration_observations``, recounted by every intake of readings in
    its transaction (``profiles.compliance.recount``), so the fleet summary sums one row per asset
    instead of counting every reading (docs/performance.md)."""

    asset = models.ForeignKey("inventory.Asset", on_delete=models.PROTECT, related_name="+")
    profile_revision = models.ForeignKey(ConfigurationProfileRevision, on_delete=models.PROTECT, related_name="+")
    observed = models.PositiveIntegerField()
    compliant = models.PositiveIntegerField()
    non_compliant = models.PositiveIntegerField()
    errors = models.PositiveIntegerField()

    class Meta:
        db_table = "configuration_compliance_counts"
        constraints = [
            models.UniqueConstraint(fields=["profile_revision", "asset"], name="compliance_count_revision_asset")
        ]

    def __str__(self) -> str:
        return f"{self.compliant}/{self.observed} compliant ({self.asset_id}, {self.profile_revision_id})"


class ConfigurationDriftEvent(models.Model):
    """One change of an item's compliance on an asset: to ``non_compliant`` (drift) or back to
    ``compliant``, never one per audit."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    asset = models.ForeignKey("inventory.Asset", on_delete=models.PROTECT, related_name="configuration_drift_events")
    site = models.ForeignKey("inventory.Site", on_delete=models.PROTECT, related_name="+")
    profile = models.ForeignKey(ConfigurationProfile, on_delete=models.PROTECT, related_name="drift_events")
    profile_revision = models.ForeignKey(ConfigurationProfileRevision, on_delete=models.PROTECT, related_name="+")
    item = models.ForeignKey(ConfigurationItem, on_delete=models.PROTECT, related_name="drift_events")
    from_state = models.CharField(max_length=20, blank=True, help_text='"" when the item had not been read before.')
    to_state = models.CharField(max_length=20, choices=ObservationState.choices)
    observed_value = models.TextField(null=True, blank=True)
    detected_at = models.DateTimeField()
    # the job whose read found the change: an audit, or an enforcement's re-read (exactly one)
    audit_job = models.ForeignKey(
        ConfigurationAuditJob, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    enforcement_job = models.ForeignKey(
        ConfigurationEnforcementJob, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    evidence = models.ForeignKey(
        "evidence.RmmEvidence",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The drift_report record (null once a retention run deleted it).",
    )

    class Meta:
        db_table = "configuration_drift_events"
        ordering = ["-detected_at"]
        indexes = [models.Index(fields=["asset", "detected_at"], name="drift_asset_time_idx")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(audit_job__isnull=True) ^ models.Q(enforcement_job__isnull=True),
                name="drift_found_by_one_job",
            )
        ]

    def __str__(self) -> str:
        return f"{self.item} on {self.asset_id}: {self.from_state or 'unread'} → {self.to_state}"


class ProfileAuditSchedule(models.Model):
    """The scheduled audits' one cursor (:mod:`profiles.scheduling`): audits whose slot fell up to
    ``dispatched_until`` were dispatched."""

    name = models.CharField(max_length=40, primary_key=True)
    dispatched_until = models.DateTimeField()

    class Meta:
        db_table = "profile_audit_schedule"

    def __str__(self) -> str:
        return f"{self.name}: {self.dispatched_until:%Y-%m-%d %H:%M:%S}"
