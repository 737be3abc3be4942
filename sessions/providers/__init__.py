"""Session providers: who carries a remote session (sessions.providers.base)."""

from sessions.providers.base import Provider, RecordingUnavailable, get, names, register, sees_activity, unregister

__all__ = ["Provider", "RecordingUnavailable", "get", "names", "register", "sees_activity", "unregister"]
