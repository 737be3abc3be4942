"""Scheduled engine work (django-q2)."""

from datetime import datetime

from rmm.engine import services
from rmm.engine.services import batches


def sweep() -> int:
    """Mark instructions whose lease ran out, or that were never leased in time, as lost."""
    return services.sweep()


def expire_approvals() -> int:
    """Reject jobs whose approval waited longer than RMM_APPROVAL_TTL_HOURS."""
    return services.expire_approvals()


def issue_later_waves(kind_name: str, job_ids: list[str], actor: str, wave_offset: int, queued_at: str) -> int:
    """Sign and store a batch's later waves once the request that queued it has committed."""
    return services.issue_later_waves(kind_name, job_ids, actor, wave_offset, datetime.fromisoformat(queued_at))


def issue_ring(batch_id: str, ring: int) -> int:
    """Sign and store a released ring's instructions once the transaction that released it has committed."""
    return batches.issue_ring(batch_id, ring)
