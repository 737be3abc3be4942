"""The built-in terminal's relay: the channel-layer group that joins a session's agent and browser
websockets (sessions.consumers), and how the broker tells them the session ended."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

AGENT_PATH = "/ws/agent/sessions/{}/"  # where the agent opens the session's websocket


def group(session_id) -> str:
    return f"remote-session-{session_id}"


def close(session_id, reason: str) -> None:
    """Both sides of a live session hang up; the agent's side writes its last chunk (sealing is a task)."""
    async_to_sync(get_channel_layer().group_send)(group(session_id), {"type": "session.close", "reason": reason})
