"""Scheduled session work (django-q2)."""

from sessions import services


def end_overdue() -> int:
    """Every minute: sessions past their maximum duration or idle timeout end, also those whose
    relay is gone (a worker that stopped mid-session), which no relay timer would end, and those
    whose join credentials were used again (:func:`services.end_misused`); and the
    recordings of ended sessions not yet sealed are sealed (the retry of :func:`seal_recording`);
    join tokens past their lifetime are deleted."""
    ended = services.end_overdue() + services.end_misused()
    services.seal_pending()
    services.forget_join_tokens()
    return ended


def seal_recording(session_id: str) -> None:
    """Scheduled on commit whenever a session ends, and when its relay wrote its last chunk."""
    services.seal_recording(session_id)
