import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone


class Site(models.Model):
    """The unit of access: every grant, selector and websocket group is per site."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Policy: may a caller request jobs on PSA authority it wrote itself and have them queued at
    # once? Off: such jobs wait in awaiting_approval for a second person (docs/psa-integration.md).
    allow_self_authorized_jobs = models.BooleanField(
        default=False,
        help_text="Jobs requested on authority the requester wrote itself run without an approver.",
    )

    class Meta:
        ordering = ["name"]
        permissions = [("access_site", "May see and operate this site")]

    def __str__(self) -> str:
        return self.name


class Asset(models.Model):
    """A managed endpoint. Identity fields are filled from the agent's reports."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="assets")
    hostname = models.CharField(max_length=255, db_index=True)
    os = models.CharField(max_length=100, blank=True)
    architecture = models.CharField(max_length=50, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Retired (``retire_asset``): its agent revoked, gone from active lists, counts and job
    # targets; its history and evidence kept.
    retired_at = models.DateTimeField(null=True, blank=True)
    retired_by = models.CharField(max_length=200, blank=True)
    retired_reason = models.TextField(blank=True)
    # Network containment as the endpoint last reported it (an EDR's isolate or release, read back
    # by the containment job's state step; containment/): none, contained or released.
    containment = models.CharField(max_length=10, default="none", editable=False)

    class Meta:
        ordering = ["hostname"]

    def __str__(self) -> str:
        return self.hostname


class AssetFacts(models.Model):
    """Actual state, as last reported by the asset's agent. Written only by agent reports."""

    asset = models.OneToOneField(Asset, on_delete=models.CASCADE, primary_key=True, related_name="facts")
    # The summary the asset API shows: the whole report of an agent that sends one blob, else
    # what each namespace's handler makes of its body (rmm/inventory/namespaces.py).
    facts = models.JSONField(default=dict)
    facts_hash = models.CharField(max_length=64)
    # Each namespace's last body and its hash, as the agent reported them.
    namespaces = models.JSONField(default=dict)
    namespace_hashes = models.JSONField(default=dict)
    reported_at = models.DateTimeField()

    class Meta:
        verbose_name_plural = "asset facts"

    def __str__(self) -> str:
        return f"facts of {self.asset_id} at {self.reported_at:%Y-%m-%d %H:%M}"


class EnrollmentToken(models.Model):
    """A per-site, expiring, use-limited secret that lets a new agent enroll; revocable at any
    time (``revoke_enrollment_token``)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="enrollment_tokens")
    token_hash = models.CharField(max_length=64, unique=True)
    expires_at = models.DateTimeField()
    max_uses = models.PositiveIntegerField()
    use_count = models.PositiveIntegerField(default=0)
    created_by = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.CharField(max_length=200, blank=True)

    def __str__(self) -> str:
        return f"enrollment token {str(self.pk)[:8]} for {self.site.name}, {self.use_count}/{self.max_uses} used"


class Agent(models.Model):
    """The endpoint agent of one asset. Its secret is stored hashed and shown once."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    asset = models.OneToOneField(Asset, on_delete=models.PROTECT, related_name="agent")
    secret_hash = models.CharField(max_length=64)
    # Rotation: the new secret's hash waits here until the agent first uses it.
    pending_secret_hash = models.CharField(max_length=64, blank=True)
    rotation_requested_at = models.DateTimeField(null=True, blank=True)
    version = models.CharField(max_length=50, blank=True)
    # The newest instruction-signing key the agent holds (it says so in every heartbeat); its
    # instructions are signed with it, or an older key it holds. Blank: the first key (pinned
    # by agents from before key ids).
    signing_key_id = models.CharField(max_length=16, blank=True)
    # The agent protocol it speaks, as its last heartbeat said (1: from before the field). A step
    # that names artefacts is never leased to an agent older than protocol 2.
    protocol = models.PositiveSmallIntegerField(default=1)
    enrolled_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    # Set by the sweep when the agent has not been seen for RMM_AGENT_OFFLINE_SECONDS, cleared by
    # the sweep once it is seen again (agent.offline / agent.online in the outbox).
    offline_since = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_reason = models.TextField(blank=True)
    # What the agent says it can do (its heartbeat's capabilities, comma-separated, sorted);
    # blank for agents that say nothing (v1). A step that needs one goes only to an agent that has it.
    capabilities = models.CharField(max_length=200, blank=True)
    # Set when a step's result says the endpoint reboots: until then the agent is rebooting, not
    # offline, and its job's next step waits for it to come back (docs/agent.md, Reboots).
    rebooting_until = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"agent of {self.asset_id}"

    def can(self, capability: str) -> bool:
        """Whether the agent said it can do ``capability`` (rmm_agent.protocol.CAPABILITIES)."""
        return capability in self.capabilities.split(",")

    def is_online(self, now: datetime | None = None) -> bool:
        """Seen within RMM_AGENT_OFFLINE_SECONDS and not marked offline by the sweep."""
        if self.offline_since is not None or self.last_seen_at is None:
            return False
        return (now or timezone.now()) - self.last_seen_at <= timedelta(seconds=settings.RMM_AGENT_OFFLINE_SECONDS)


class RefusalWindow(models.Model):
    """Refusals of callers that are not authenticated (an unknown agent credential, a bad
    enrollment token, a locked-out sign-in), counted per source: the first of a window is in the
    history, the others only here, until the window closes with one event that gives the count."""

    address = models.CharField(max_length=64)
    action = models.CharField(max_length=64)  # the refusal's action without "refused."
    opened_at = models.DateTimeField()
    last_at = models.DateTimeField()
    refusals = models.PositiveIntegerField(default=1)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["address", "action"], name="one_refusal_window_per_source")]
        indexes = [models.Index(fields=["opened_at"], name="refusal_window_opened")]

    def __str__(self) -> str:
        return f"{self.refusals} refused {self.action} from {self.address}"
