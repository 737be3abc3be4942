"""Scheduled profile work (django-q2)."""

from profiles import assignments


def stop_unauthorised_assignments() -> int:
    """Stop assignments whose PSA task expired or was withdrawn (every minute)."""
    return assignments.stop_unauthorised_assignments()
