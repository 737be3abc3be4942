"""Scheduled session work (django-q2)."""

from sessions import services


def end_overdue() -> int:
    """Every minute: sessions past their maximum duration or idle timeout end, also those whose
    relay is gone (a worker that stopped mid-session), which no relay timer would end."""
    return services.end_overdue()
