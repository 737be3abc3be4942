"""Scheduled artefact work (django-q2)."""

from rmm.artefacts import services


def expire_pending() -> int:
    return services.expire_pending()
