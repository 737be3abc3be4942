"""Live events to console users, sent after commit to the site's Channels group."""

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

ALL_GROUP = "all"  # every console user: global announcements (a global kill switch)


def site_group(site_id) -> str:
    return f"site.{site_id}"


def _send_on_commit(group: str, event: dict) -> None:
    def send():
        layer = get_channel_layer()
        if layer is not None:
            async_to_sync(layer.group_send)(group, {"type": "rmm.event", "event": event})

    transaction.on_commit(send)


def publish(site_id, event: dict) -> None:
    """Send ``event`` to everyone watching the site, once the transaction commits."""
    _send_on_commit(site_group(site_id), event)


def publish_all(event: dict) -> None:
    """Send ``event`` to every console user (it must carry nothing site-specific)."""
    _send_on_commit(ALL_GROUP, event)
