"""Live events to console users, sent after commit to the site's Channels group."""

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction


def site_group(site_id) -> str:
    return f"site.{site_id}"


def publish(site_id, event: dict) -> None:
    """Send ``event`` to everyone watching the site, once the transaction commits."""

    def send():
        layer = get_channel_layer()
        if layer is not None:
            async_to_sync(layer.group_send)(site_group(site_id), {"type": "rmm.event", "event": event})

    transaction.on_commit(send)
