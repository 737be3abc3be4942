"""The public half of every signing key, per purpose, in the order of its rotations.

The private halves are never stored here (:mod:`rmm.keys.store`). Nothing in this table is
trusted because it is in the database: a rotation statement is signed by the key before and the
key after, so agents (forward) and auditors (backward) check every link themselves.
"""

from django.db import models
from django.utils import timezone


class KeyPurpose(models.TextChoices):
    INSTRUCTIONS = "instructions", "Instructions (agents verify them)"
    EVIDENCE = "evidence", "Evidence (history anchors and export bundles; auditors verify them)"
    RELEASES = "releases", "Agent releases (agents verify an update before installing it)"


class SigningKey(models.Model):
    purpose = models.CharField(max_length=20, choices=KeyPurpose.choices)
    sequence = models.PositiveIntegerField(help_text="1 for a purpose's first key, then one more per rotation.")
    key_id = models.CharField(max_length=16, help_text="The first 16 hex digits of the public key's sha256.")
    public_key = models.CharField(max_length=64, help_text="Base64 of the raw 32-byte Ed25519 public key.")
    created_at = models.DateTimeField(default=timezone.now)
    not_before = models.DateTimeField(help_text="The server signs nothing with it before this time.")
    retired_at = models.DateTimeField(null=True, blank=True, help_text="Signs nothing any more; agents drop it.")
    rotation = models.JSONField(
        default=dict, blank=True, help_text="The statement that introduced it, signed by the key before and by itself."
    )
    retirement = models.JSONField(default=dict, blank=True, help_text="The statement that retired it.")

    class Meta:
        ordering = ["purpose", "sequence"]
        constraints = [
            models.UniqueConstraint(fields=["purpose", "sequence"], name="signingkey_one_per_step"),
            models.UniqueConstraint(fields=["purpose", "key_id"], name="signingkey_unique_id"),
        ]

    def __str__(self) -> str:
        return f"{self.purpose} key {self.key_id}"
