"""The server's Ed25519 instruction-signing key."""

import base64
from functools import lru_cache

from cryptography.hazmat.primitives import serialization
from django.conf import settings

from rmm import dependencies
from rmm.keys import load_or_create_signing_key


@lru_cache(maxsize=1)
def _key():
    try:
        return load_or_create_signing_key(settings.RMM_SIGNING_KEY_FILE)
    except (OSError, ValueError, TypeError) as exc:  # unreadable, or not an unencrypted PEM key: 503, not cached
        reason = f"{settings.RMM_SIGNING_KEY_FILE}: {dependencies.short(exc)}"
        dependencies.mark_down(dependencies.SIGNING_KEY, reason)
        raise dependencies.Unavailable(dependencies.SIGNING_KEY, reason) from exc


def sign(payload: bytes) -> str:
    return base64.b64encode(_key().sign(payload)).decode()


def public_key_b64() -> str:
    raw = _key().public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()
