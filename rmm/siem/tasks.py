"""The SIEM feed's work in the task cluster (django-q2), scheduled every minute."""

from rmm.siem import services


def follow() -> int:
    return services.follow()
