"""The provider interface: what brokers one kind of remote session (the built-in terminal, an
external remote-access server such as MeshCentral). The broker (sessions.services) keeps every
law (authority, policy, approval, history, evidence); a provider only starts, ends and hands
back the recording. Providers register by name; a session names its provider."""

from __future__ import annotations

from collections.abc import Iterator

from rmm.engine.registry import InstructionSpec


class RecordingUnavailable(Exception):
    """A provider that records itself has no recording to hand back (yet): the broker tries again."""


class Provider:
    """A provider; subclasses set ``name`` and the session types they carry."""

    name: str = ""
    session_types: tuple[str, ...] = ()
    # what the asset's agent must report it can do (its heartbeat's capabilities) and be online
    # for; "": the provider reaches the endpoint by its own means
    capability: str = ""
    # it sees the session's bytes, so the site's idle timeout applies (the broker's relay does)
    sees_activity: bool = False
    # it can be started by an approver after the session waited (its join URL is the console's)
    can_wait_for_approval: bool = True
    # it records the session itself and hands the recording back (fetch_recording) after its end
    records_itself: bool = False
    # its join URL carries credentials the technician's browser uses (a login token): the minute's
    # sweep asks ``misuse`` of its live sessions
    hands_out_credentials: bool = False
    # the sealed recording's file extension and format, as its evidence record names it
    recording_format: tuple[str, str] = ("cast", "asciicast v2")

    def prepare(self, user, asset) -> dict:
        """Before the session exists, once the engine's laws passed (authority, kill switches):
        refuse (Conflict, Forbidden) what the provider cannot carry, and answer the ``provider_*``
        fields it keeps on the session."""
        return {}

    def start(self, session) -> str:
        """Prepare the session and answer the URL the technician joins it at."""
        raise NotImplementedError

    def end(self, session, reason: str) -> None:
        """Stop whatever still carries the session (its relay, a remote token)."""
        raise NotImplementedError

    def fetch_recording(self, session) -> Iterator[bytes] | None:
        """The session's recording as chunks, or None when the broker recorded it itself."""
        raise NotImplementedError

    def misuse(self, session) -> dict | None:
        """What shows a live session's join credentials misused (a login token used a second
        time), as ``{"reason": ..., ...details}``, or None; the minute's sweep asks providers that
        hand out such credentials (``hands_out_credentials``) and ends the session."""
        return None

    def steps(self, session) -> list[InstructionSpec]:
        """What the asset's agent must run for the session (none: the provider reaches the
        endpoint by its own means)."""
        return []


_PROVIDERS: dict[str, Provider] = {}


def register(provider: Provider) -> None:
    _PROVIDERS[provider.name] = provider


def unregister(name: str) -> None:
    _PROVIDERS.pop(name, None)


def get(name: str) -> Provider:
    """The provider of that name (LookupError when none is registered)."""
    try:
        return _PROVIDERS[name]
    except KeyError:
        raise LookupError(f"no session provider named {name!r}") from None


def names() -> list[str]:
    return sorted(_PROVIDERS)


def sees_activity(name: str) -> bool:
    """Whether the provider named so sees the session's bytes (an unregistered one: assume so)."""
    provider = _PROVIDERS.get(name)
    return provider is None or provider.sees_activity
