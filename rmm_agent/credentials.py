"""The agent's credentials as the server changes them: a rotated secret, and the keys it trusts
(instruction-signing and release keys) updated by signed statements. Each change is adopted only
once it is durably in config.json, so a failed write leaves the old credentials working."""

from __future__ import annotations

import logging
import re

from . import keyring
from .client import Client
from .logs import one_line
from .state import StateDir

log = logging.getLogger("rmm_agent")

# A rotated secret goes into an HTTP header: visible ASCII only, so no header can be injected.
SECRET_RE = re.compile(r"[\x21-\x7e]{16,512}")

# How the logs name each key set: (one statement, storing it, updated); docs/agent.md quotes them.
KEY_WORDS = {
    "server_keys": ("signing key", "the server's signing keys", "server signing keys"),
    "release_keys": ("release key", "the release keys", "release keys"),
}


def server_keys_of(config: dict) -> dict[str, bytes]:
    """The instruction-signing keys an agent trusts, by id: ``server_keys`` in its config, or (a
    config written before keys had ids) the one ``server_public_key`` pinned at enrollment."""
    if "server_keys" not in config:
        pinned = keyring.decode_public_key(config["server_public_key"])
        return {keyring.key_id(pinned): pinned}
    if not isinstance(config["server_keys"], dict) or not config["server_keys"]:
        raise ValueError("server_keys is not a non-empty object")
    return keyring.trusted_keys(config["server_keys"])


def release_keys_of(config: dict) -> dict[str, bytes]:
    """The release keys pinned at enrollment (none for an agent enrolled before they existed: it
    cannot update itself, and says so by not reporting the ``self_update`` capability)."""
    encoded = config.get("release_keys") or {}
    if not isinstance(encoded, dict):
        raise ValueError("release_keys is not an object")
    return keyring.trusted_keys(encoded)


def rotate_secret(state: StateDir, config: dict, client: Client, new_secret: object) -> dict:
    """Adopt a secret the server rotated, but only once it is durably in config.json; the config
    to use from now on.

    The server accepts the old secret until the agent first calls with the new one, and
    answers every call made with the old one with a fresh secret. So if writing fails (or
    the agent dies first), the old secret still works and the next heartbeat offers a new one.
    """
    if new_secret in (None, config.get("secret")):
        return config
    if not isinstance(new_secret, str) or not SECRET_RE.fullmatch(new_secret):
        log.error("server sent an unusable new secret; keeping the current one")
        return config
    try:
        config = state.save_secret(config, new_secret)
    except OSError as exc:
        log.error("could not store the rotated secret (%s); keeping the current one", one_line(str(exc)))
        return config
    client.secret = new_secret
    log.info("agent secret rotated")
    return config


def update_keys(
    state: StateDir, config: dict, current: dict[str, bytes], update: object, field: str, purpose: str
) -> tuple[dict, dict[str, bytes]]:
    """Trust the keys a rotation introduced, and stop trusting retired ones, once that is
    durably in config.json; the config and the keys to use from now on.

    ``current`` are the instruction-signing keys (``field`` ``server_keys``, purpose
    ``instructions``) or the release keys (``release_keys``, purpose ``release.RELEASES``).
    Each new key must come in a statement signed by a key this agent already trusts; anything
    else is refused and logged, and the keys stay as they were. If writing fails, the server
    sends the statements again on the next heartbeat (this agent reports the keys it holds),
    and signs with a key this agent holds until then.
    """
    keys, refused = keyring.apply_update(current, update, purpose)
    for problem in refused:
        log.error("refused a %s statement from the server: %s", KEY_WORDS[field][0], one_line(problem))
    if keys == current:
        return config, current
    try:
        config = state.save_keys(config, field, keys)
    except OSError as exc:
        log.error("could not store %s (%s); keeping the current ones", KEY_WORDS[field][1], one_line(str(exc)))
        return config, current
    added = sorted(set(keys) - set(current))
    dropped = sorted(set(current) - set(keys))
    log.info(
        "%s updated: trusting %s%s",
        KEY_WORDS[field][2],
        ", ".join(added) or "no new key",
        f"; retired {', '.join(dropped)}" if dropped else "",
    )
    return config, keys
