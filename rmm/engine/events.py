"""Live events to console users, sent after commit to the site's Channels group, and wake-ups
for agents waiting in ``POST /api/v1/agent/wait/``."""

import asyncio
from collections.abc import Iterable

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

ALL_GROUP = "all"  # every console user: global announcements (a global kill switch)


def site_group(site_id) -> str:
    return f"site.{site_id}"


def user_group(user_id) -> str:
    """One person's own events (the progress of an export they asked for)."""
    return f"user.{user_id}"


def agent_group(agent_id) -> str:
    """One agent's wake-ups: its long-poll listens here."""
    return f"agent.{agent_id}"


WAKE = {"type": "agent.wake"}
_WAKE_BATCH = 50  # group sends in flight at once, well under the Redis client's pool of 100


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


def publish_user(user_id, event: dict) -> None:
    """Send ``event`` to one user's open consoles, once the transaction commits."""
    _send_on_commit(user_group(user_id), event)


def wake_agents(agent_ids: Iterable) -> None:
    """Once the transaction commits, wake these agents' long-polls: they heartbeat, and lease, at once.

    A wake-up is only a hint; an agent that was not waiting finds its work at its next heartbeat.
    """
    groups = sorted({agent_group(pk) for pk in agent_ids})
    if not groups:
        return

    async def send_all(layer) -> None:
        for start in range(0, len(groups), _WAKE_BATCH):
            await asyncio.gather(*(layer.group_send(group, WAKE) for group in groups[start : start + _WAKE_BATCH]))

    def send():
        layer = get_channel_layer()
        if layer is not None:
            async_to_sync(send_all)(layer)

    transaction.on_commit(send, robust=True)  # a lost hint must not fail what already committed
