"""The outbox: every outbound event is a row written in the transaction of the change that caused
it, delivered later to each subscribed endpoint, with every attempt kept."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class Endpoint(models.Model):
    """Where events are POSTed. ``event_types`` lists the types it hears (``["*"]``: every type);
    ``sites``, when any, restrict it to events of those sites (an event without a site then does
    not reach it). The PSA's endpoint (name ``psa``) is kept in step with ``RMM_PSA_WEBHOOK_URL``;
    the others are webhook subscriptions made through the API or the admin."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100, unique=True)
    url = models.URLField(max_length=2000)
    secret = models.CharField(max_length=200, help_text="The Standard Webhooks secret (whsec_…).")
    event_types = models.JSONField(default=list)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sites = models.ManyToManyField(
        "inventory.Site", blank=True, related_name="+", help_text="None: events of every site, and those of none."
    )
    previous_secret = models.CharField(
        max_length=200, blank=True, help_text="The secret before the last rotation; it signs too until it expires."
    )
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    def __str__(self) -> str:
        return self.name


class Event(models.Model):
    """One outbound event. Its body is built once, at its first delivery (by then everything the
    causing transaction wrote, evidence included, is committed), and every delivery and repeat
    sends exactly that body under the same ``webhook-id``."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    type = models.CharField(max_length=100, db_index=True)
    subject_type = models.CharField(max_length=100)
    subject_id = models.CharField(max_length=64)
    site_id = models.UUIDField(null=True, blank=True)
    data = models.JSONField(default=dict, blank=True)
    body = models.BinaryField(null=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.type} {self.subject_id}"

    @property
    def message_id(self) -> str:
        """The ``webhook-id`` header: receivers de-duplicate on it."""
        return f"msg_{self.id.hex}"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


class Delivery(models.Model):
    """An event on its way to one endpoint."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    event = models.ForeignKey(Event, on_delete=models.PROTECT, related_name="deliveries")
    endpoint = models.ForeignKey(Endpoint, on_delete=models.PROTECT, related_name="deliveries")
    status = models.CharField(max_length=20, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    replayed_after = models.PositiveIntegerField(default=0, help_text="Attempts made before its last replay.")
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    claim = models.UUIDField(null=True, editable=False, help_text="The batch that is sending it.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "deliveries"
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="outbox_delivery_due")]

    def __str__(self) -> str:
        return f"{self.event} → {self.endpoint} ({self.status})"


class Attempt(models.Model):
    """One try of a delivery, kept whatever its outcome."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    status_code = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField()
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["delivery", "number"]
        constraints = [models.UniqueConstraint(fields=["delivery", "number"], name="outbox_attempt_once")]

    def __str__(self) -> str:
        return f"attempt {self.number}: {self.status_code or self.error[:60]}"
