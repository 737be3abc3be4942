"""SIEM destinations: where the execution history is streamed, each with its own cursor (the last
history sequence it acknowledged), so that an outage loses nothing and the feed resumes in order."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class Kind(models.TextChoices):
    SYSLOG = "syslog"
    HTTP = "http"


class Format(models.TextChoices):
    JSON = "json"
    CEF = "cef"


class Shape(models.TextChoices):
    SPLUNK_HEC = "splunk_hec"
    ELASTIC_BULK = "elastic_bulk"


class Destination(models.Model):
    """A collector that receives every history event (of its sites, when it has any) in chain
    order. ``cursor`` moves only after the collector acknowledged a batch; the feed reads the
    history after it, so appending to the history costs nothing more."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    address = models.CharField(max_length=2000, help_text="syslog: host:port; http: the collector's base URL.")
    format = models.CharField(max_length=10, choices=Format.choices, default=Format.JSON)
    tls = models.BooleanField(default=False)
    shape = models.CharField(max_length=20, choices=Shape.choices, blank=True, help_text="http only.")
    token = models.CharField(max_length=500, blank=True, help_text="http only: HEC token or Elastic API key.")
    index = models.CharField(max_length=200, blank=True, help_text="http only: Splunk index or Elastic index.")
    ca_certificate = models.TextField(blank=True, help_text="PEM CA to trust for TLS; empty: the system's.")
    sites = models.ManyToManyField(
        "inventory.Site", blank=True, related_name="+", help_text="None: events of every site, and those of none."
    )
    enabled = models.BooleanField(default=True)
    cursor = models.BigIntegerField(default=0, help_text="The last history sequence delivered (or passed over).")
    delivered_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    failures = models.PositiveIntegerField(default=0, help_text="Failed attempts since the last delivery.")
    last_error = models.TextField(blank=True)
    lease_until = models.DateTimeField(null=True, blank=True, help_text="A worker ships it until then.")
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name


class Follower(models.Model):
    """Which run of the task cluster's follow task is the newest. Each run takes the next
    generation when it starts and stops as soon as a newer one has taken over, so consecutive runs
    hand over without a gap (the feed is never left unfollowed between two minutes' runs) and
    overlap for at most a poll."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    generation = models.BigIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"follow run {self.generation}"
