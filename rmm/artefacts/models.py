"""The fields every artefact model has (:mod:`rmm.artefacts.registry`): who wrote a version, when,
and the one decision on it. An abstract model: each kind's table holds them."""

from django.conf import settings
from django.db import models

from rmm.artefacts.states import ApprovalStatus

# What an admin shows of a version's authorship and decision, after the kind's own fields.
DECISION_FIELDS = ["author", "created_at", "approval_status", "decided_by", "decided_at", "decision_reason"]


class ArtefactVersion(models.Model):
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    approval_status = models.CharField(
        max_length=20, choices=ApprovalStatus.choices, default=ApprovalStatus.PENDING, db_index=True
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_reason = models.TextField(blank=True)

    class Meta:
        abstract = True
