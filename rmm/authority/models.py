from django.conf import settings
from django.db import models

from rmm.inventory.models import Site


class AuthorityStatus(models.TextChoices):
    OPEN = "open"
    APPROVED = "approved"
    REJECTED = "rejected"
    CLOSED = "closed"


def authority_gone(case_status, case_expires_at, task_status, task_expires_at, now) -> str | None:
    """Why a case and task (their status and expiry) no longer authorise work at ``now``, or None.

    One place for the words, whether the rows were loaded (``authority_problem``) or their
    columns came with the lease's own statement (``rmm.engine.services.leasing.lease``).
    """
    if case_status != AuthorityStatus.APPROVED:
        return f"PSA case is {case_status}, not approved"
    if task_status is not None and task_status != AuthorityStatus.APPROVED:
        return f"PSA task is {task_status}, not approved"
    for label, expires in (("case", case_expires_at), ("task", task_expires_at)):
        if expires is not None and expires <= now:
            return f"PSA {label} authority expired at {expires.isoformat()}"
    return None


class PsaCase(models.Model):
    """A mirror of the PSA's case; its id is the PSA's own UUID."""

    id = models.UUIDField(primary_key=True, editable=False)
    title = models.CharField(max_length=500)
    status = models.CharField(max_length=20, choices=AuthorityStatus.choices)
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="psa_cases")
    expires_at = models.DateTimeField(null=True, blank=True)
    # who last wrote it: a job requested by the same account is self-authorized (Site policy)
    written_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "PSA case"

    def __str__(self) -> str:
        return f"{self.title} ({self.status})"


class PsaTask(models.Model):
    """A mirror of a task of a PSA case; jobs cite it as their authority."""

    id = models.UUIDField(primary_key=True, editable=False)
    case = models.ForeignKey(PsaCase, on_delete=models.PROTECT, related_name="tasks")
    title = models.CharField(max_length=500)
    status = models.CharField(max_length=20, choices=AuthorityStatus.choices)
    expires_at = models.DateTimeField(null=True, blank=True)
    written_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "PSA task"

    def __str__(self) -> str:
        return f"{self.title} ({self.status})"
