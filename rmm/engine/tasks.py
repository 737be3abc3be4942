"""Scheduled engine work (django-q2)."""

from rmm.engine import services


def sweep() -> int:
    """Mark instructions whose lease ran out, or that were never leased in time, as lost."""
    return services.sweep()


def expire_approvals() -> int:
    """Reject jobs whose approval waited longer than RMM_APPROVAL_TTL_HOURS."""
    return services.expire_approvals()
