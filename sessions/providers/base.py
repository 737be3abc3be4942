"""The provider interface: what brokers one kind of remote session (the built-in terminal, an
external remote-access server such as MeshCentral). The broker (sessions.services) keeps every
law (authority, policy, approval, history, evidence); a provider only starts, ends and hands
back the recording. Providers register by name; a session names its provider."""

from __future__ import annotations

from collections.abc import Iterator

from rmm.engine.registry import InstructionSpec


class Provider:
    """A provider; subclasses set ``name`` and the session types they carry."""

    name: str = ""
    session_types: tuple[str, ...] = ()

    def start(self, session) -> str:
        """Prepare the session and answer the URL the technician joins it at."""
        raise NotImplementedError

    def end(self, session, reason: str) -> None:
        """Stop whatever still carries the session (its relay, a remote token)."""
        raise NotImplementedError

    def fetch_recording(self, session) -> Iterator[bytes] | None:
        """The session's recording as chunks, or None when the broker recorded it itself."""
        raise NotImplementedError

    def steps(self, session) -> list[InstructionSpec]:
        """What the asset's agent must run for the session (none: the provider reaches the
        endpoint by its own means)."""
        return []


_PROVIDERS: dict[str, Provider] = {}


def register(provider: Provider) -> None:
    _PROVIDERS[provider.name] = provider


def get(name: str) -> Provider:
    """The provider of that name (LookupError when none is registered)."""
    try:
        return _PROVIDERS[name]
    except KeyError:
        raise LookupError(f"no session provider named {name!r}") from None


def names() -> list[str]:
    return sorted(_PROVIDERS)
