"""Remote sessions (seed F, ``remote_sessions``): a technician's live session on one asset,
brokered through a provider on a PSA task's authority, recorded in full. The row is a job of the
kind ``remote_session`` (sessions.kind), so the engine applies authority, sites, kill switches and
approval to it as to every other kind; ``status`` is the job's, ``ended_at``/``end_reason`` the
session's own."""

import uuid

from django.conf import settings
from django.db import models

from rmm.artefacts.models import ArtefactVersion
from rmm.engine.models import JobBase, job_indexes


class SessionType(models.TextChoices):
    TERMINAL = "terminal"  # a shell (the built-in terminal)
    REMOTE_CONTROL = "remote_control"  # a remote-access server's own app on the device (MeshCentral)


class EndReason(models.TextChoices):
    USER = "user"  # the technician who opened it, or another who may operate the site
    ADMIN = "admin"
    KILL_SWITCH = "kill_switch"
    MAX_DURATION = "max_duration"
    IDLE = "idle"
    RECORDING_FAILED = "recording_failed"
    AGENT = "agent"  # the agent's side closed (the shell exited, the agent stopped)
    REJECTED = "rejected"  # an approver refused it before it started
    PROVIDER = "provider"  # its provider could not start it (a remote-access server that refused)
    AUTHORITY = "authority"  # its PSA task or case was withdrawn or expired (Law 1 after it opened too)
    CREDENTIALS_MISUSED = "credentials_misused"  # its join credentials were used again (a token's second login)


class RemoteSession(JobBase):
    """``remote_sessions``: the seed's fields (asset, initiated_by, session_type, started_at,
    ended_at, recorded), the authority (``psa_task``), the provider, why it ended, and where its
    recording is stored with the recording's sha256 once sealed."""

    asset = models.ForeignKey("inventory.Asset", on_delete=models.PROTECT, related_name="remote_sessions")
    initiated_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    session_type = models.CharField(max_length=20, choices=SessionType.choices, default=SessionType.TERMINAL)
    provider = models.CharField(max_length=40)
    psa_task = models.ForeignKey("authority.PsaTask", on_delete=models.PROTECT, related_name="remote_sessions")
    privileged = models.BooleanField(default=False, help_text="The shell runs as root (always needs an approver).")
    # started_at: its agent took its step (the engine stamps it); completed_at: the job ended
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    relay_opened_at = models.DateTimeField(null=True, blank=True, help_text="The agent's websocket was accepted.")
    relay_closed_at = models.DateTimeField(
        null=True, blank=True, help_text="The relay wrote its last chunk: the recording may be sealed."
    )
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=20, choices=EndReason.choices, blank=True)
    ended_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    recorded = models.BooleanField(default=False, help_text="Its recording is sealed as evidence.")
    recording_uri = models.CharField(max_length=500, blank=True, help_text="Where the recording is stored.")
    recording_sha256 = models.CharField(max_length=64, blank=True)
    last_activity_at = models.DateTimeField(null=True, blank=True, help_text="The last byte relayed either way.")
    # What a provider that reaches the endpoint by its own means keeps to end the session later
    # (MeshCentral: the technician's user id, the device's node id, the login token's user name).
    provider_user = models.CharField(max_length=200, blank=True)
    provider_device = models.CharField(max_length=200, blank=True)
    provider_token = models.CharField(max_length=200, blank=True)

    class Meta(JobBase.Meta):
        db_table = "remote_sessions"
        ordering = ["-created_at"]
        indexes = job_indexes("remote_session")

    def __str__(self) -> str:
        return f"{self.session_type} session on {self.asset_id}"

    @property
    def live(self) -> bool:
        return self.started_at is not None and self.ended_at is None


class SessionPolicy(ArtefactVersion):
    """One immutable version of a site's rules for remote sessions (``remote_session_policies``):
    an artefact kind (sessions/artefact.py), proposed by an admin and four-eyes approved. The
    site's approved version with the highest ``version`` rules its new sessions and the live ones'
    limits (:mod:`sessions.policies`); a site without one has the fields' defaults."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    site = models.ForeignKey("inventory.Site", on_delete=models.PROTECT, related_name="session_policies")
    version = models.PositiveIntegerField()
    allowed = models.BooleanField(default=True)
    approval_required = models.BooleanField(default=False)
    max_duration_seconds = models.PositiveIntegerField(default=4 * 3600)
    idle_timeout_seconds = models.PositiveIntegerField(default=15 * 60)

    class Meta:
        db_table = "remote_session_policies"
        verbose_name_plural = "session policies"
        ordering = ["site", "-version"]
        constraints = [models.UniqueConstraint(fields=["site", "version"], name="remote_session_policy_version_once")]
        indexes = [models.Index(fields=["site", "approval_status", "version"], name="remote_session_policy_idx")]

    def __str__(self) -> str:
        return f"{self.site.name} v{self.version}"


class RecordingChunk(models.Model):
    """One stored piece of a session's recording, in order. ``chain`` is sha256(the previous
    chunk's chain + this chunk's sha256), the first chunk's previous chain being the session's
    id: a chunk missing, reordered or edited breaks every chain after it (docs/sessions.md)."""

    session = models.ForeignKey(RemoteSession, on_delete=models.PROTECT, related_name="chunks")
    index = models.PositiveIntegerField()
    offset = models.PositiveBigIntegerField(help_text="Where it starts in the whole recording.")
    size = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)
    chain = models.CharField(max_length=64)
    blob = models.CharField(max_length=300, help_text="Its name in the blob store.")

    class Meta:
        db_table = "remote_session_recording_chunks"
        constraints = [models.UniqueConstraint(fields=["session", "index"], name="remote_session_chunk_once")]
        ordering = ["session", "index"]

    def __str__(self) -> str:
        return f"chunk {self.index} of {self.session_id}"


class JoinMode(models.TextChoices):
    INTERACTIVE = "interactive"  # the technician who opened it types
    WATCH = "watch"  # an admin watches it live


class JoinToken(models.Model):
    """A single-use ticket that lets one user's browser join one session's relay once."""

    session = models.ForeignKey(RemoteSession, on_delete=models.CASCADE, related_name="join_tokens")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    token_hash = models.CharField(max_length=64, unique=True)
    mode = models.CharField(max_length=12, choices=JoinMode.choices)
    created_at = models.DateTimeField(auto_now_add=True)
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "remote_session_join_tokens"

    def __str__(self) -> str:
        return f"{self.mode} join of {self.session_id}"
