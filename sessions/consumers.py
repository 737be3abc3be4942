"""The built-in terminal's relay: the agent's websocket and the browsers' meet in the session's
channel-layer group (sessions.relay). The agent's side records every frame in and out
(sessions.recording) and ends the session when a chunk cannot be written, when the session
outlives its site's maximum duration or idle timeout, or when the agent hangs up; the broker
ends it by telling the group (``session.close``)."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from rmm.core.errors import ServiceError
from rmm.engine import agent_limits
from rmm.inventory import services as inventory
from sessions import policies, recording, relay, services
from sessions.models import EndReason, JoinMode

log = logging.getLogger(__name__)

REFUSED = 4403
UNKNOWN = 4401  # no agent holds that credential
LIMITED = 4429  # too many refused credentials from this address: the agent tier's limit (docs/security.md)
CHECK_SECONDS = 0.5  # how often the relay looks at the session's maximum duration and idle time
ACTIVITY_SECONDS = 30.0  # at most how often the relay records, while bytes flow, that they do


def _header(scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


@database_sync_to_async
def _open_relay(scope, session_id):
    """The agent's credential, under the same limit as its HTTP calls: an address that keeps
    showing unknown credentials is refused before any is looked up (``agent_limits``)."""
    header, address = _header(scope, b"authorization"), agent_limits.client_address(scope)
    if agent_limits.retry_after(address, header):
        return LIMITED, None
    agent = inventory.authenticate_agent(header)
    if agent is None:
        agent_limits.distrust(header)
        agent_limits.count(address)
        return UNKNOWN, None
    session = services.relay_opened(agent, session_id)
    return session, policies.policy_for(session.site)


@database_sync_to_async
def _end(session, reason: str) -> None:
    services.end_by_system(session, reason)


@database_sync_to_async
def _flush(recorder: recording.Recorder, session_id, at: float) -> None:
    recorder.flush()
    services.touch(session_id, _moment(at))


@database_sync_to_async
def _touch(session_id, at: float) -> None:
    services.touch(session_id, _moment(at))


def _moment(at: float) -> datetime:
    return datetime.fromtimestamp(at, tz=UTC)


@database_sync_to_async
def _flush_last(recorder: recording.Recorder, session_id) -> None:
    """The last chunk; then the recording is sealed (services.seal_recording, a task)."""
    recorder.flush()
    services.relay_closed(session_id)


class AgentRelayConsumer(AsyncWebsocketConsumer):
    """``/ws/agent/sessions/<id>/``: the agent, authenticated like its other calls, relays the PTY."""

    session = None

    async def connect(self):
        session_id = self.scope["url_route"]["kwargs"]["session_id"]
        try:
            opened, policy = await _open_relay(self.scope, session_id)
        except ServiceError:
            await self.close(code=REFUSED)
            return
        if opened in (UNKNOWN, LIMITED):
            await self.close(code=opened)
            return
        self.session = opened
        self.policy = policy
        # recorded in the database at most this often while bytes flow: often enough that the
        # minute's sweep, which reads it, never ends a session in use as idle
        self.activity_every = min(ACTIVITY_SECONDS, policy.idle_timeout_seconds / 3)
        self.started = time.time()
        self.last_activity = self.touched = self.started
        self.recorder = recording.Recorder(self.session.pk, self.started)
        self.ending = None
        try:
            await _flush(self.recorder, self.session.pk, self.started)  # no recording, no session
        except recording.RecordingFailed:
            await _end(self.session, EndReason.RECORDING_FAILED)
            await self.close(code=REFUSED)
            return
        await self.channel_layer.group_add(relay.group(self.session.pk), self.channel_name)
        await self.accept()
        self.watch = asyncio.ensure_future(self._watch())

    async def _watch(self):
        """End the session at its maximum duration or idle timeout, by the sweep's rule
        (services.overdue_reason) with the activity this relay saw."""
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            self.session.last_activity_at = _moment(self.last_activity)
            reason = services.overdue_reason(self.session, self.policy, _moment(time.time()))
            if reason is not None:
                await self._end(reason)
                return

    async def _end(self, reason: str):
        if self.ending is None:
            self.ending = reason
            await _end(self.session, reason)  # the broker tells the group, which closes this socket

    async def _record(self, kind: str, data: bytes) -> bool:
        self.last_activity = time.time()
        self.recorder.frame(kind, data, self.last_activity)
        if self.recorder.due:
            try:
                await _flush(self.recorder, self.session.pk, self.last_activity)
            except recording.RecordingFailed as exc:
                log.error("session %s: %s", self.session.pk, exc)
                await self._end(EndReason.RECORDING_FAILED)
                return False
            self.touched = self.last_activity
        elif self.last_activity - self.touched >= self.activity_every:
            self.touched = self.last_activity
            await _touch(self.session.pk, self.last_activity)
        return True

    async def receive(self, text_data=None, bytes_data=None):
        if bytes_data is None or self.ending is not None:
            return
        if await self._record("o", bytes_data):
            await self.channel_layer.group_send(
                relay.group(self.session.pk), {"type": "relay.output", "data": bytes_data}
            )

    async def relay_input(self, message):
        if self.ending is None and await self._record("i", message["data"]):
            await self.send(bytes_data=message["data"])

    async def relay_output(self, message):
        """Its own output, heard through the group: the browsers show it."""

    async def session_close(self, message):
        self.ending = self.ending or message["reason"]
        await self.close()

    async def disconnect(self, code):
        if self.session is None or not hasattr(self, "recorder"):
            return
        self.watch.cancel()
        await self.channel_layer.group_discard(relay.group(self.session.pk), self.channel_name)
        if self.ending is None:  # the agent hung up (the shell exited)
            self.ending = EndReason.AGENT
            await _end(self.session, EndReason.AGENT)
        if self.ending == EndReason.RECORDING_FAILED:
            return  # what was written stays as chunks; the history says why it ended
        try:
            await _flush_last(self.recorder, self.session.pk)
        except recording.RecordingFailed:
            log.exception("session %s: its last chunk could not be written", self.session.pk)


@database_sync_to_async
def _join(user, session_id, token: str):
    return services.redeem_join_token(user, session_id, token)


@database_sync_to_async
def _refuse_frame(user, session) -> None:
    services.refuse_frame(user, session)


class BrowserRelayConsumer(AsyncWebsocketConsumer):
    """``/ws/sessions/<id>/?token=…``: a signed-in user's browser with a single-use join token;
    the technician who opened the session types, an admin watches."""

    session = None

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        token = parse_qs(self.scope.get("query_string", b"").decode()).get("token", [""])[0]
        try:
            self.session, self.mode = await _join(user, self.scope["url_route"]["kwargs"]["session_id"], token)
        except ServiceError:
            await self.close(code=REFUSED)
            return
        self.ended = False
        await self.channel_layer.group_add(relay.group(self.session.pk), self.channel_name)
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        data = bytes_data if bytes_data is not None else (text_data or "").encode()
        if self.ended:
            await _refuse_frame(self.scope["user"], self.session)
            await self.close(code=REFUSED)
            return
        if self.mode == JoinMode.INTERACTIVE and data:
            await self.channel_layer.group_send(relay.group(self.session.pk), {"type": "relay.input", "data": data})

    async def relay_input(self, message):
        """Keystrokes, heard through the group: only the agent's side takes them."""

    async def relay_output(self, message):
        await self.send(bytes_data=message["data"])

    async def session_close(self, message):
        self.ended = True
        await self.send(text_data=f"\r\n[session ended: {message['reason']}]\r\n")
        await self.close()

    async def disconnect(self, code):
        if self.session is not None:
            await self.channel_layer.group_discard(relay.group(self.session.pk), self.channel_name)
