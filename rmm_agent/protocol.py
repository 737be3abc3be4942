"""The agent/server wire contract, shared by both sides.

The server imports this module too, so hashing and verification are defined exactly once.
Only ``hashlib``/``json`` at import time; ``cryptography`` is imported lazily by
:func:`verify_instruction` so the hashing helpers stay importable anywhere.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from . import keyring

# The protocol this agent speaks, sent in every heartbeat. An agent that sends none speaks 1;
# 2 added artefacts (instructions that name files to fetch and verify before the step runs).
PROTOCOL_VERSION = 2
ARTEFACTS_SINCE = 2

OUTCOMES = ("completed", "timed_out", "aborted", "refused", "error")
INTERPRETERS = ("sh", "bash", "python", "powershell")
# The remote session action (sessions.providers.terminal): the agent relays a PTY over a websocket
# to the server for as long as the session lasts; only to agents whose capabilities say they can.
SESSION_ACTION = "remote_session"
# Instructions the agent carries out itself rather than by an interpreter (rmm_agent.updater): the
# content is the order, covered by the signature and content hash like a script.
AGENT_ACTIONS = ("agent_update", SESSION_ACTION)
# The bytes of each output stream the agent keeps; the rest is read and discarded.
MAX_STREAM_BYTES = 1024 * 1024
# The largest body of any agent call, as sent (encoded JSON, in bytes). The agent builds every
# result to fit; the server answers anything larger 413 without parsing it (docs/agent.md).
MAX_BODY_BYTES = 5 * 1024 * 1024
# Each stream of a result resent after the server refused it (docs/agent.md, Spool and resend).
DELIVERY_STREAM_BYTES = 64 * 1024
MAX_REASON_CHARS = 2000
# Facts: their canonical JSON, how deep they nest, the hostname (as DNS allows) and the addresses
# the agent lists. Facts beyond these are refused (400), never cut: they are the asset's identity.
MAX_FACTS_BYTES = 64 * 1024
MAX_FACTS_DEPTH = 8
MAX_HOSTNAME_CHARS = 255
MAX_FACT_ADDRESSES = 256
# Fact namespaces (docs/agent.md, Fact namespaces): the ones this agent reads by itself, each sent
# with its own hash and its body only when that hash changed. A body is at most
# MAX_NAMESPACE_BYTES (canonical JSON), all bodies of one heartbeat at most MAX_FACTS_BYTES, at
# most MAX_NAMESPACES namespaces per heartbeat.
FACT_NAMESPACES = ("os", "hardware", "network", "agent")
NAMESPACE_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_NAMESPACE_BYTES = 16 * 1024
MAX_NAMESPACES = 32
EXIT_CODE_RANGE = (-(2**31), 2**31 - 1)  # what the server stores (a 32-bit integer)

# How a stream travels: "utf-8" (the text itself) or "base64" (of the exact bytes).
STREAM_ENCODINGS = ("utf-8", "base64")

# The result fields covered by the result hash, in the contract's words. A field that is absent
# from a result is left out of its hash (the later ones are optional); the server requires the
# first seven. Adding a field to the contract is adding it here.
RESULT_HASH_FIELDS = (
    "instruction_id",
    "outcome",
    "exit_code",
    "stdout",
    "stderr",
    "stdout_truncated",
    "stderr_truncated",
    "stdout_encoding",
    "stderr_encoding",
    "truncated_for_delivery",
    "original_hash",
    "containment",
    "structured",
    "structured_error",
    "reboot",
)
# A structured result: the JSON document a script writes to the file named by RESULT_PATH_ENV,
# at most this many bytes, nested at most this deep; read by the agent once the script ended.
RESULT_PATH_ENV = "RMM_RESULT_PATH"
MAX_STRUCTURED_BYTES = 256 * 1024
MAX_STRUCTURED_DEPTH = 32
# What a step may ask of the endpoint after its script succeeded (the payload's ``reboot``).
REBOOT_MODES = ("now", "if_pending")
# What an agent says it can do (its heartbeat's ``capabilities``); the server sends a step that
# needs one only to an agent that named it.
CAPABILITY_STRUCTURED_RESULT = "structured_result"
CAPABILITY_REBOOT = "reboot"
CAPABILITY_ARTEFACTS = "artefacts"  # also implied by protocol 2, which the server goes by
# Named only by an agent installed for it (a versioned install) that holds release keys.
CAPABILITY_SELF_UPDATE = "self_update"
# Streams what a running step prints (rmm_agent/live.py), for steps whose signed payload offers
# it (``"live_output": true``, sent only to agents that name the capability).
CAPABILITY_LIVE_OUTPUT = "live_output"
# Relays a remote session's PTY over a websocket (rmm_agent/session.py): only where the
# ``websockets`` package (11 or later, its sync client) can be imported.
CAPABILITY_REMOTE_SESSION = "remote_session"
CAPABILITIES = (
    CAPABILITY_STRUCTURED_RESULT,
    CAPABILITY_REBOOT,
    CAPABILITY_ARTEFACTS,
    CAPABILITY_SELF_UPDATE,
    CAPABILITY_LIVE_OUTPUT,
    CAPABILITY_REMOTE_SESSION,
)
# Live output (docs/agent.md, Live output): at most one call per LIVE_OUTPUT_SECONDS per
# instruction, each stream's text in it at most LIVE_CHUNK_BYTES of UTF-8; the server keeps the
# last LIVE_TAIL_BYTES of each stream while the step runs. Never the record: the result is.
LIVE_STREAMS = ("stdout", "stderr")
LIVE_OUTPUT_SECONDS = 0.5
LIVE_CHUNK_BYTES = 32 * 1024
LIVE_TAIL_BYTES = 64 * 1024
# How an instruction's processes were ended (the result's optional ``containment.method``).
CONTAINMENT_METHODS = ("cgroup", "account", "process_group")

# Instruction ids become file names (spool, work dir), so only safe characters are accepted.
INSTRUCTION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

# An instruction's artefacts: how many, their names (a file name, and the suffix of the script's
# RMM_ARTEFACT_<NAME>), their hashes, and where the agent fetches them (a path on its server).
MAX_ARTEFACTS = 16
ARTEFACT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
ARTEFACT_ENV_PREFIX = "RMM_ARTEFACT_"

# Refusal reasons produced by verify_instruction (in check order).
REASON_UNKNOWN_KEY = "unknown_key"  # no key_id, or one the agent does not trust (a missed rotation?)
REASON_BAD_SIGNATURE = "bad_signature"
REASON_MALFORMED = "malformed_payload"
REASON_WRONG_AGENT = "wrong_agent"
REASON_HASH_MISMATCH = "hash_mismatch"
REASON_EXPIRED = "expired"
REASON_UNSUPPORTED_INTERPRETER = "unsupported_interpreter"
# Refused by the agent after verification: the instruction was already run or refused.
REASON_REPLAYED = "replayed"
# Refused by the agent before the step ran: an artefact's bytes are not those the payload names.
REASON_ARTEFACT_MISMATCH = "artefact_mismatch"


class InstructionRefused(Exception):
    """An instruction failed verification; it must be reported as refused, never run."""

    def __init__(self, reason: str, instruction_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.instruction_id = instruction_id


def artefact_env_name(name: str) -> str:
    """The environment variable that gives the script an artefact's path."""
    return ARTEFACT_ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", name.upper())


def artefacts_problem(artefacts: Any) -> str | None:
    """What makes a list of artefacts unusable (the payload's, or a kind's rendering), or None:
    each an object with a name (unique, also as an environment variable), a sha256, a size and
    a URL path on the server."""
    if not isinstance(artefacts, list) or len(artefacts) > MAX_ARTEFACTS:
        return f"artefacts must be a list of at most {MAX_ARTEFACTS}"
    names = set()
    for item in artefacts:
        if not isinstance(item, dict):
            return "an artefact must be an object"
        name, size, url = item.get("name"), item.get("size"), item.get("url")
        if not isinstance(name, str) or not ARTEFACT_NAME_RE.fullmatch(name):
            return f"artefact name {name!r} is not a plain file name"
        if artefact_env_name(name) in names:
            return f"artefact name {name!r} is used twice"
        names.add(artefact_env_name(name))
        if not isinstance(item.get("sha256"), str) or not SHA256_RE.fullmatch(item["sha256"]):
            return f"artefact {name!r} has no lower-case hex sha256"
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            return f"artefact {name!r} has no size"
        if not isinstance(url, str) or not url.startswith("/") or url.startswith("//"):
            return f"artefact {name!r} has no URL path on the server"
    return None


def canonical_json(obj: Any) -> bytes:
    """Serialise deterministically so both sides hash byte-identical input."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256, the one digest used across the protocol."""
    return hashlib.sha256(data).hexdigest()


def facts_hash(facts: dict) -> str:
    """Hash of the facts (or of one namespace's body), so heartbeats only carry what changed."""
    return sha256_hex(canonical_json(facts))


def merge_patch(target: Any, patch: Any) -> Any:
    """``target`` with a JSON merge patch applied (RFC 7386): an object's keys merged, a null
    removing its key, anything else replacing the value whole."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def merge_diff(old: dict, new: dict) -> dict | None:
    """The merge patch that turns ``old`` into ``new``; None when no patch can (``new`` holds a
    null, which a merge patch can only read as a removal)."""
    patch: dict = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key, _ABSENT)
        if before is not _ABSENT and canonical_json(before) == canonical_json(value):
            continue
        if isinstance(value, dict) and isinstance(before, dict):
            inner = merge_diff(before, value)
            if inner is None:
                return None
            patch[key] = inner
        elif _holds_null(value):
            return None
        else:
            patch[key] = value
    return patch


_ABSENT = object()


def _holds_null(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, dict):
        return any(_holds_null(item) for item in value.values())
    if isinstance(value, list):
        return any(_holds_null(item) for item in value)
    return False


def result_hash(result: dict) -> str:
    """Hash over the result's evidence fields, so the server can check what it stores."""
    return sha256_hex(canonical_json({key: result[key] for key in RESULT_HASH_FIELDS if key in result}))


def structured_problem(document: Any) -> str | None:
    """Why a structured result cannot be stored, or None. Both sides check it: the agent before
    it sends one, the server when it takes one in. An object or an array, at most
    :data:`MAX_STRUCTURED_BYTES` as canonical JSON and :data:`MAX_STRUCTURED_DEPTH` deep, finite
    numbers, and text that databases store (no NUL, no lone surrogate)."""
    if not isinstance(document, (dict, list)):
        return "not a JSON object or array"
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_STRUCTURED_DEPTH:
            return f"nested deeper than {MAX_STRUCTURED_DEPTH}"
        if isinstance(value, dict):
            if not all(isinstance(key, str) for key in value):
                return "an object key is not a string"
            stack.extend((item, depth + 1) for item in (*value.keys(), *value.values()))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            if "\x00" in value or not _encodable(value):
                return "a string holds NUL or a lone surrogate"
        elif isinstance(value, float) and not math.isfinite(value):
            return "a number is not finite"
        elif value is not None and not isinstance(value, (bool, int, float)):
            return "not JSON"
    try:
        size = len(canonical_json(document))
    except (TypeError, ValueError, RecursionError):
        return "not JSON"
    if size > MAX_STRUCTURED_BYTES:
        return f"larger than {MAX_STRUCTURED_BYTES} bytes"
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def utf8_tail(text: str, limit: int) -> str:
    """The end of ``text`` that fits in ``limit`` bytes of UTF-8, whole characters only: how both
    sides bound live output (a lone surrogate raises UnicodeEncodeError)."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[len(data) - limit :].decode("utf-8", "ignore")


def encode_body(body: dict) -> bytes:
    """A call's body exactly as the agent sends it; its length is what :data:`MAX_BODY_BYTES`
    bounds. ASCII JSON, so any string the agent holds can be sent."""
    return json.dumps(body, separators=(",", ":")).encode("ascii")


def sendable_text(text: str | None, limit: int = MAX_REASON_CHARS) -> str | None:
    """A message as the server stores it: NUL and lone surrogates (an undecodable file name in
    an error, say) written as escapes, at most ``limit`` characters."""
    if text is None:
        return None
    safe = str(text).replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
    return safe[:limit]


def encode_stream(data: bytes) -> tuple[str, str]:
    """(value, encoding) of one output stream: its text when it is UTF-8 without NUL and, sent
    as JSON, at most half again the size of its base64 (newlines and most scripts' text are);
    else the base64 of the exact bytes. So a stream of n bytes is at most about 2n on the wire,
    and two full streams fit :data:`MAX_BODY_BYTES`."""
    encoded = base64.b64encode(data).decode("ascii")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return encoded, "base64"
    if "\x00" not in text and len(json.dumps(text)) <= 3 * len(encoded) // 2 + 2:
        return text, "utf-8"
    return encoded, "base64"


def decode_stream(value: str, encoding: str | None) -> bytes:
    """The exact bytes of a stream as sent; raises ValueError when it does not decode (a text
    with a lone surrogate, or base64 that is not)."""
    if encoding in (None, "utf-8"):
        return value.encode("utf-8")  # UnicodeEncodeError (a ValueError) on a lone surrogate
    if encoding == "base64":
        try:
            return base64.b64decode(value.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise ValueError("not base64") from exc
    raise ValueError(f"unknown encoding {encoding!r}")


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z`` suffix (naive datetimes are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_iso(value: str) -> datetime:
    """Parse ISO 8601 (``Z`` allowed) to an aware datetime; naive values are taken as UTC."""
    if not isinstance(value, str):
        raise TypeError("not a string")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def _unverified_instruction_id(payload: Any) -> str | None:
    """Best-effort id from a payload we could not trust, so the refusal can be reported."""
    if not isinstance(payload, str):
        return None
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    return _usable_id(data.get("instruction_id")) if isinstance(data, dict) else None


def _usable_id(value: Any) -> str | None:
    """The id if it is safe to use as a file name (spool, ledger), else None."""
    return value if isinstance(value, str) and INSTRUCTION_ID_RE.fullmatch(value) else None


def _check_signature(envelope: Any, server_keys: Mapping[str, bytes]) -> str:
    """Return the payload text if it is signed by the trusted key its ``key_id`` names, else
    raise ``unknown_key`` (no such trusted key) or ``bad_signature``."""
    payload = envelope.get("payload") if isinstance(envelope, dict) else None
    signature = envelope.get("signature") if isinstance(envelope, dict) else None
    signer = envelope.get("key_id") if isinstance(envelope, dict) else None
    instruction_id = _unverified_instruction_id(payload)
    if not isinstance(payload, str) or not isinstance(signature, str):
        raise InstructionRefused(REASON_BAD_SIGNATURE, instruction_id)
    if not isinstance(signer, str) or signer not in server_keys:
        raise InstructionRefused(REASON_UNKNOWN_KEY, instruction_id)
    if not keyring.verify(server_keys[signer], payload.encode("utf-8"), signature):
        raise InstructionRefused(REASON_BAD_SIGNATURE, instruction_id)
    return payload


def verify_instruction(envelope: dict, server_keys: Mapping[str, bytes], agent_id: str, now: datetime) -> dict:
    """Return the payload of a signed instruction, or raise :class:`InstructionRefused`.

    ``server_keys`` are the trusted keys by id (:mod:`.keyring`). Checks, in order: signing key,
    signature, addressee, content hash, expiry, interpreter, then the shape
    of the remaining fields. Only what passes every check may ever be executed.
    """
    text = _check_signature(envelope, server_keys)
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise InstructionRefused(REASON_MALFORMED, None) from exc
    if not isinstance(payload, dict):
        raise InstructionRefused(REASON_MALFORMED, None)
    instruction_id = _usable_id(payload.get("instruction_id"))

    if payload.get("agent_id") != agent_id:
        raise InstructionRefused(REASON_WRONG_AGENT, instruction_id)

    content = payload.get("content")
    if not isinstance(content, str):
        raise InstructionRefused(REASON_MALFORMED, instruction_id)
    if sha256_hex(content.encode("utf-8")) != payload.get("content_sha256"):
        raise InstructionRefused(REASON_HASH_MISMATCH, instruction_id)

    try:
        not_after = parse_iso(payload.get("not_after"))
    except (TypeError, ValueError) as exc:
        raise InstructionRefused(REASON_MALFORMED, instruction_id) from exc
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    if not not_after > now:
        raise InstructionRefused(REASON_EXPIRED, instruction_id)

    if payload.get("interpreter") not in INTERPRETERS + AGENT_ACTIONS:
        raise InstructionRefused(REASON_UNSUPPORTED_INTERPRETER, instruction_id)

    _check_shape(payload, instruction_id)
    return payload


def _check_shape(payload: dict, instruction_id: str | None) -> None:
    """Refuse signed payloads whose fields the runner could not use as intended."""
    timeout = payload.get("timeout_seconds")
    arguments = payload.get("arguments", [])
    privileged = payload.get("privileged", False)
    if (
        payload.get("reboot") not in (None, *REBOOT_MODES)
        or instruction_id is None
        or isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or timeout <= 0
        or not isinstance(arguments, list)
        or not all(isinstance(arg, str) for arg in arguments)
        or not isinstance(privileged, bool)
        or ("artefacts" in payload and artefacts_problem(payload["artefacts"]) is not None)
    ):
        raise InstructionRefused(REASON_MALFORMED, instruction_id)
