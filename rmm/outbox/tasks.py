"""The outbox's work in the task cluster (django-q2)."""

from rmm.outbox import services


def deliver(delivery_id: str) -> int:
    """Queued for each new delivery (and each retry that fell due): sends it with whatever else
    is due for its endpoint."""
    return services.send_endpoint(delivery_id)


def send_due() -> int:
    return services.send_due()
