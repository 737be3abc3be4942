"""Scheduled profile work (django-q2)."""

from profiles import assignments


def stop_unauthorised_assignments() -> int:
    """Stop assignments whose PSA task expired or was withdrawn (every minute)."""
    return assignments.stop_unauthorised_assignments()


def enforce_drift(audit_job_id: str) -> int:
    """Enforce what an audit found drifted on enforce-mode items, when its assignment is approved
    (queued by the audit's result once it committed)."""
    from profiles import enforcement

    return len(enforcement.enforce_drift(audit_job_id))


def dispatch_scheduled_audits() -> int:
    """Create the audits that fell due since the last tick (every minute)."""
    from profiles import scheduling

    return len(scheduling.dispatch_due())
