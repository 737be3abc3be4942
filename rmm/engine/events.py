"""Live events to console users, sent after commit to the site's Channels group, and wake-ups
for agents holding their heartbeat open (rmm.engine.wakeups)."""

from collections.abc import Iterable

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from rmm.engine import wakeups

ALL_GROUP = "all"  # every console user: global announcements (a global kill switch)


def site_group(site_id) -> str:
    return f"site.{site_id}"


def user_group(user_id) -> str:
    """One person's own events (the progress of an export they asked for)."""
    return f"user.{user_id}"


def _send_on_commit(sends: list[tuple[str, dict]]) -> None:
    """Send each (group, event) once the transaction commits, all in one hop to the layer."""
    if not sends:
        return

    async def send_all(layer) -> None:
        for group, event in sends:
            await layer.group_send(group, {"type": "rmm.event", "event": event})

    def send():
        layer = get_channel_layer()
        if layer is not None:
            async_to_sync(send_all)(layer)

    transaction.on_commit(send, robust=True)  # a live view that misses an event must not fail a commit


def publish(site_id, event: dict) -> None:
    """Send ``event`` to everyone watching the site, once the transaction commits."""
    _send_on_commit([(site_group(site_id), event)])


def publish_many(events: Iterable[tuple]) -> None:
    """:func:`publish` for many (site id, event) pairs, sent together once the transaction commits."""
    _send_on_commit([(site_group(site_id), event) for site_id, event in events])


def publish_all(event: dict) -> None:
    """Send ``event`` to every console user (it must carry nothing site-specific)."""
    _send_on_commit([(ALL_GROUP, event)])


def publish_user(user_id, event: dict) -> None:
    """Send ``event`` to one user's open consoles, once the transaction commits."""
    _send_on_commit([(user_group(user_id), event)])


def access_changed(user_id) -> None:
    """Once the transaction commits, the user's open consoles re-read the sites they may see
    (rmm/console/consumers.py): a revoked site's live events stop at once."""

    def send():
        layer = get_channel_layer()
        if layer is not None:
            async_to_sync(layer.group_send)(user_group(user_id), {"type": "rmm.access"})

    transaction.on_commit(send, robust=True)


def wake_agents(agent_ids: Iterable) -> None:
    """Once the transaction commits, wake these agents' held heartbeats: they lease at once.

    A wake-up is only a hint; an agent that was not waiting finds its work at its next heartbeat.
    """
    ids = list(agent_ids)
    if ids:
        transaction.on_commit(lambda: wakeups.wake(ids), robust=True)
