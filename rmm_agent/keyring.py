"""Signing keys by id, and the signed statements that rotate and retire them.

Shared by the agent and the server (which builds the statements with these same functions), so
the format is defined once. ``cryptography`` is imported lazily, like in :mod:`.protocol`.

- A key id is the first 16 hex digits of the sha256 of the raw 32-byte Ed25519 public key (the
  fingerprint, ``SHA256:<64 hex>``, starts with it). Every signature names its key by id.
- A **rotation statement** introduces key K2 of a purpose as the successor of K1. Its payload is
  signed by K1 (``key_id``/``signature``: whoever trusts K1 may trust K2) and by K2
  (``new_key_signature``: K2's holder vouches that K1 came before it, so old signatures by K1
  stay verifiable by whoever trusts K2). Both signatures are always checked.
- A **retirement statement** says that a key no longer signs anything; it is signed by a newer
  key of the same purpose. An agent stops trusting the retired key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ROTATION = "rmm.signing_key_rotation"
RETIREMENT = "rmm.signing_key_retirement"
KEY_ID_LENGTH = 16


class StatementRefused(Exception):
    """A key statement that is malformed, or not signed by a key the verifier trusts."""


def key_id(raw_public_key: bytes) -> str:
    """The id every signature carries: 16 hex digits of the key's sha256."""
    return hashlib.sha256(bytes(raw_public_key)).hexdigest()[:KEY_ID_LENGTH]


def fingerprint(raw_public_key: bytes) -> str:
    """What people compare out of band: ``SHA256:`` and the whole hex digest."""
    return "SHA256:" + hashlib.sha256(bytes(raw_public_key)).hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def decode_public_key(text: Any) -> bytes:
    """The raw 32 bytes of a base64 Ed25519 public key, or ValueError."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValueError("not base64") from exc
    if len(raw) != 32:
        raise ValueError("not a 32-byte Ed25519 public key")
    return raw


def verify(raw_public_key: bytes, data: bytes, signature: Any) -> bool:
    """True when ``signature`` (base64) is the key's Ed25519 signature of ``data``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        raw_signature = base64.b64decode(signature, validate=True)
        if len(raw_signature) != 64:
            return False
        Ed25519PublicKey.from_public_bytes(bytes(raw_public_key)).verify(raw_signature, data)
    except (binascii.Error, ValueError, TypeError, InvalidSignature):
        return False
    return True


def trusted_keys(encoded: Mapping[str, str]) -> dict[str, bytes]:
    """``{key id: base64 public key}`` (as stored in config.json) decoded and checked: each id must
    be its key's id. Raises ValueError."""
    keys = {}
    for kid, text in encoded.items():
        raw = decode_public_key(text)
        if key_id(raw) != kid:
            raise ValueError(f"key id {kid!r} does not match its public key")
        keys[kid] = raw
    return keys


# --- statements ---------------------------------------------------------------------------------


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def rotation_payload(
    key_purpose: str, sequence: int, previous: bytes, new: bytes, not_before: str, rotated_at: str
) -> str:
    """The text both keys sign when ``new`` succeeds ``previous`` for ``key_purpose``."""
    return _canonical(
        {
            "purpose": ROTATION,
            "key_purpose": key_purpose,
            "sequence": sequence,
            "previous_key_id": key_id(previous),
            "previous_public_key": b64(previous),
            "key_id": key_id(new),
            "public_key": b64(new),
            "not_before": not_before,
            "rotated_at": rotated_at,
        }
    )


def retirement_payload(key_purpose: str, retired: str, retired_at: str) -> str:
    return _canonical({"purpose": RETIREMENT, "key_purpose": key_purpose, "key_id": retired, "retired_at": retired_at})


@dataclass(frozen=True)
class Rotation:
    key_purpose: str
    sequence: int
    previous_key_id: str
    previous_public_key: bytes
    key_id: str
    public_key: bytes
    not_before: str


def _payload(envelope: Any, purpose: str, key_purpose: str) -> dict:
    if not isinstance(envelope, dict) or not isinstance(envelope.get("payload"), str):
        raise StatementRefused("not a signed statement")
    try:
        payload = json.loads(envelope["payload"])
    except ValueError:
        raise StatementRefused("not a signed statement") from None
    if not isinstance(payload, dict) or payload.get("purpose") != purpose:
        raise StatementRefused("not a signed statement")
    if payload.get("key_purpose") != key_purpose:
        raise StatementRefused(f"a statement about {payload.get('key_purpose')!r} keys, not {key_purpose!r} keys")
    return payload


def read_rotation(envelope: Any, key_purpose: str) -> Rotation:
    """A rotation statement whose two signatures verify with the keys it names (it says nothing
    yet about whether either key is to be trusted: see :func:`follow_rotation`)."""
    payload = _payload(envelope, ROTATION, key_purpose)
    try:
        previous = decode_public_key(payload["previous_public_key"])
        new = decode_public_key(payload["public_key"])
        sequence, not_before = payload["sequence"], payload["not_before"]
    except (KeyError, ValueError):
        raise StatementRefused("a malformed rotation statement") from None
    if (
        payload.get("previous_key_id") != key_id(previous)
        or payload.get("key_id") != key_id(new)
        or envelope.get("key_id") != key_id(previous)
        or not isinstance(sequence, int)
        or not isinstance(not_before, str)
    ):
        raise StatementRefused("a malformed rotation statement")
    data = envelope["payload"].encode("utf-8")
    if not verify(previous, data, envelope.get("signature")):
        raise StatementRefused(f"the signature of key {key_id(previous)} does not verify")
    if not verify(new, data, envelope.get("new_key_signature")):
        raise StatementRefused(f"the new key {key_id(new)} did not sign it")
    return Rotation(key_purpose, sequence, key_id(previous), previous, key_id(new), new, not_before)


def follow_rotation(envelope: Any, key_purpose: str, trusted: Mapping[str, bytes]) -> Rotation:
    """Forward: a rotation signed by a key in ``trusted`` (so its new key may be trusted)."""
    rotation = read_rotation(envelope, key_purpose)
    if trusted.get(rotation.previous_key_id) != rotation.previous_public_key:
        raise StatementRefused(f"signed by key {rotation.previous_key_id}, which this verifier does not trust")
    return rotation


def read_retirement(envelope: Any, key_purpose: str, trusted: Mapping[str, bytes]) -> str:
    """The id of the key that a statement signed by another trusted key retires."""
    payload = _payload(envelope, RETIREMENT, key_purpose)
    retired, signer = payload.get("key_id"), envelope.get("key_id")
    if not isinstance(retired, str) or not isinstance(signer, str):
        raise StatementRefused("a malformed retirement statement")
    if signer == retired or signer not in trusted:
        raise StatementRefused(f"signed by key {signer}, which this verifier does not trust")
    if not verify(trusted[signer], envelope["payload"].encode("utf-8"), envelope.get("signature")):
        raise StatementRefused(f"the signature of key {signer} does not verify")
    return retired


def apply_update(trusted: Mapping[str, bytes], update: Any, key_purpose: str) -> tuple[dict[str, bytes], list[str]]:
    """The keys to trust after a server's key update (``{"rotations": [...], "retirements":
    [...]}``), and what was refused. Rotations are followed in order, each from a key already
    trusted (K1→K2→K3 for an agent that missed two); a refused one ends the chain. Retirements
    are then checked against the keys trusted by then; the last key is never given up."""
    keys = dict(trusted)
    refused: list[str] = []
    if not isinstance(update, dict):
        return keys, ["a key update that is not an object"]
    rotations = update.get("rotations") if isinstance(update.get("rotations"), list) else []
    retirements = update.get("retirements") if isinstance(update.get("retirements"), list) else []
    for envelope in rotations:
        try:
            rotation = follow_rotation(envelope, key_purpose, keys)
        except StatementRefused as exc:
            refused.append(f"rotation: {exc}")
            break
        keys[rotation.key_id] = rotation.public_key
    retired = set()
    for envelope in retirements:
        try:
            retired.add(read_retirement(envelope, key_purpose, keys))
        except StatementRefused as exc:
            refused.append(f"retirement: {exc}")
    kept = {kid: raw for kid, raw in keys.items() if kid not in retired}
    return (kept or keys), refused
