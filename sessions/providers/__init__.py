"""Session providers: who carries a remote session (sessions.providers.base)."""

from sessions.providers.base import Provider, get, names, register

__all__ = ["Provider", "get", "names", "register"]
