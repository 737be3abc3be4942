"""The outbox's work in the task cluster (django-q2)."""

from rmm.outbox import services


def deliver(delivery_id: str) -> str | None:
    return services.deliver(delivery_id)


def send_due() -> int:
    return services.send_due()
