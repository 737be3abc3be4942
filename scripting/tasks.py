"""Scheduled scripting work (django-q2)."""

from scripting import services


def expire_pending_versions() -> int:
    return services.expire_pending_versions()
