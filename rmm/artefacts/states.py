"""An artefact version's approval status: pending until a second person decides it, once."""

from django.db import models


class ApprovalStatus(models.TextChoices):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
