"""The built-in terminal provider, the embedded default: a signed ``remote_session`` step makes
the asset's agent open an outbound websocket to this server and relay a PTY; the technician's
browser joins on the session's console page; the server relays both ways and records every byte
(docs/sessions.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator

from django.urls import reverse

from rmm.engine.registry import InstructionSpec
from rmm_agent.protocol import CAPABILITY_REMOTE_SESSION, SESSION_ACTION
from sessions.providers.base import Provider, register

# How long the agent's step may outlive the session's maximum duration before the engine times it out.
STEP_SLACK_SECONDS = 120


class TerminalProvider(Provider):
    name = "terminal"
    session_types = ("terminal",)
    capability = CAPABILITY_REMOTE_SESSION
    sees_activity = True

    def start(self, session) -> str:
        return reverse("remote-session", args=[session.pk])

    def end(self, session, reason: str) -> None:
        from sessions import relay

        relay.close(session.pk, reason)

    def fetch_recording(self, session) -> Iterator[bytes] | None:
        return None  # the server recorded it as it relayed

    def steps(self, session) -> list[InstructionSpec]:
        from sessions import policies, relay

        policy = policies.policy_for(session.site)
        return [
            InstructionSpec(
                asset=session.asset,
                interpreter=SESSION_ACTION,
                content=json.dumps({"session": str(session.pk), "relay": relay.AGENT_PATH.format(session.pk)}),
                timeout_seconds=policy.max_duration_seconds + STEP_SLACK_SECONDS,
                privileged=session.privileged,
            )
        ]


register(TerminalProvider())
