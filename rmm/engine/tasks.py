"""Scheduled engine work (django-q2)."""

from datetime import datetime

from rmm.engine.services import batches, deciding, issuing, stopping


def sweep() -> int:
    """Mark instructions whose lease ran out, or that were never leased in time, as lost."""
    return stopping.sweep()


def expire_approvals() -> int:
    """Reject jobs whose approval waited longer than RMM_APPROVAL_TTL_HOURS."""
    return deciding.expire_approvals()


def issue_later_waves(kind_name: str, job_ids: list[str], actor: str, wave_offset: int, queued_at: str) -> int:
    """Sign and store a batch's later waves once the request that queued it has committed."""
    return issuing.issue_later_waves(kind_name, job_ids, actor, wave_offset, datetime.fromisoformat(queued_at))


def issue_ring(batch_id: str, ring: int) -> int:
    """Sign and store a released ring's instructions once the transaction that released it has committed."""
    return batches.issue_ring(batch_id, ring)
