"""A result as the agent reports it: built, hashed and fitted to the protocol's bound, cut
again when the server refuses it, and the script's structured result read from its work dir
without following anything the script could point elsewhere."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime

from .protocol import (
    DELIVERY_STREAM_BYTES,
    MAX_BODY_BYTES,
    MAX_STRUCTURED_BYTES,
    decode_stream,
    encode_body,
    encode_stream,
    iso_utc,
    result_hash,
    sendable_text,
    structured_problem,
)

RESULT_FILE = "result.json"  # in the work dir: the structured result the script may write
# The file whose presence says the OS wants a reboot (Debian's; a step's ``reboot: "if_pending"``).
REBOOT_REQUIRED_PATH = "/var/run/reboot-required"
# What says so on Windows, under HKEY_LOCAL_MACHINE: either key present (servicing, Windows
# Update), or the Session Manager's PendingFileRenameOperations value set (files replaced at boot).
WINDOWS_REBOOT_KEYS = (
    r"SOFTWARE\Microsoft\Windows\CurrentVersion\Component Based Servicing\RebootPending",
    r"SOFTWARE\Microsoft\Windows\CurrentVersion\WindowsUpdate\Auto Update\RebootRequired",
)
WINDOWS_SESSION_MANAGER = r"SYSTEM\CurrentControlSet\Control\Session Manager"
WINDOWS = os.name == "nt"


def now_utc() -> datetime:
    """The current time in UTC (one place, for timestamps in results)."""
    return datetime.now(UTC)


def make_result(
    instruction_id: str,
    outcome: str,
    *,
    exit_code: int | None = None,
    stdout: bytes | str = b"",
    stderr: bytes | str = b"",
    stdout_truncated: bool = False,
    stderr_truncated: bool = False,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
    reason: str | None = None,
    containment: dict | None = None,
    structured: object = None,
    structured_error: str | None = None,
    reboot: bool | None = None,
) -> dict:
    """Build a result body exactly as the results endpoint expects, hash included.

    The streams are the exact bytes the script printed (text is taken as its UTF-8); each is
    sent as text or as base64 (:func:`~rmm_agent.protocol.encode_stream`), and cut until the
    encoded body fits :data:`~rmm_agent.protocol.MAX_BODY_BYTES`.

    ``containment`` (what ended the instruction's processes, and which had to be killed) is
    sent only for instructions that ran; ``structured`` (the script's JSON document) or
    ``structured_error`` (why the one it wrote is unusable) only when it wrote one; ``reboot``
    only for a step that asked for one (True: the endpoint reboots once the result is sent).
    """
    finished = finished_at or now_utc()
    result = {
        "instruction_id": instruction_id,
        "outcome": outcome,
        "exit_code": exit_code,
        "stdout_truncated": stdout_truncated,
        "stderr_truncated": stderr_truncated,
        "started_at": iso_utc(started_at or finished),
        "finished_at": iso_utc(finished),
        "reason": sendable_text(reason),
    }
    if containment is not None:
        result["containment"] = containment
    if structured is not None:
        result["structured"] = structured
    if structured_error is not None:
        result["structured_error"] = sendable_text(structured_error, 200)
    if reboot is not None:
        result["reboot"] = reboot
    return seal_result(result, {"stdout": _as_bytes(stdout), "stderr": _as_bytes(stderr)})


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)


def seal_result(result: dict, streams: dict[str, bytes], limit: int = MAX_BODY_BYTES) -> dict:
    """Encode ``streams`` into ``result`` and hash it, cutting the largest stream (and saying
    so in its ``*_truncated``) until the body as sent is at most ``limit`` bytes."""
    streams = dict(streams)
    while True:
        for name, data in streams.items():
            result[name], result[f"{name}_encoding"] = encode_stream(data)
        result.pop("hash", None)
        result["hash"] = result_hash(result)
        excess = len(encode_body(result)) - limit
        if excess <= 0:
            return result
        name = max(streams, key=lambda key: len(result[key]))
        data = streams[name]
        if not data:
            raise ValueError("the result does not fit the protocol's bound even without output")
        per_char = len(data) / len(result[name])  # bytes of output per character sent
        streams[name] = data[: max(0, len(data) - int(excess * per_char) - 1)]
        result[f"{name}_truncated"] = True


def truncated_for_delivery(result: dict) -> dict | None:
    """The result to send instead of one the server refused (400, 413, …): the same result with
    each stream cut to :data:`~rmm_agent.protocol.DELIVERY_STREAM_BYTES`, or, once that was
    refused too, to nothing; ``truncated_for_delivery`` and the first result's ``original_hash``
    say so, under the hash. None when nothing is left to cut."""
    streams = {}
    for name in ("stdout", "stderr"):
        try:
            streams[name] = decode_stream(str(result.get(name) or ""), result.get(f"{name}_encoding"))
        except ValueError:
            streams[name] = b""  # a stream that does not decode cannot be sent either
    again = bool(result.get("truncated_for_delivery"))
    if again and not any(streams.values()) and "structured" not in result:
        return None
    keep = 0 if again else DELIVERY_STREAM_BYTES
    smaller = {key: value for key, value in result.items() if key != "hash"}
    if again and smaller.pop("structured", None) is not None:
        smaller["structured_error"] = "dropped: the server refused the result with it"
    for name, data in streams.items():
        if len(data) > keep:
            streams[name] = data[:keep]
            smaller[f"{name}_truncated"] = True
    original = result.get("original_hash") or result.get("hash")
    if isinstance(original, str) and len(original) == 64:
        smaller["original_hash"] = original
    smaller["truncated_for_delivery"] = True
    smaller["reason"] = sendable_text(result.get("reason"))
    return seal_result(smaller, streams)


def refused_result(instruction_id: str, reason: str) -> dict:
    """A refusal is reported like any other result, but nothing was executed."""
    return make_result(instruction_id, "refused", reason=reason)


def read_structured(dir_fd: int, owner: int) -> tuple[object, str | None]:
    """(the document, why it is unusable) of the structured result the script left in its work
    dir (``dir_fd``); (None, None) when it wrote none. Opened relative to the work dir without
    following a link, and only a regular file of the script's own account (uid ``owner``) with
    one link: the script cannot make the agent read anything of anyone else's."""
    try:
        fd = os.open(RESULT_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"not readable: {exc.strerror}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != owner or st.st_nlink != 1:
            return None, "not a regular file of the script's own account"
        if st.st_size > MAX_STRUCTURED_BYTES:
            return None, f"larger than {MAX_STRUCTURED_BYTES} bytes"
        data = os.read(fd, MAX_STRUCTURED_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_STRUCTURED_BYTES:
        return None, f"larger than {MAX_STRUCTURED_BYTES} bytes"
    try:
        document = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return None, "not JSON"
    problem = structured_problem(document)
    return (None, problem) if problem else (document, None)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def reboot_follows(payload: dict, outcome: str, exit_code: int | None, structured_error: str | None) -> bool | None:
    """For a step that asks for a reboot: whether the endpoint reboots after it (its script
    succeeded, and for ``if_pending`` the OS says one is pending); None for other steps."""
    mode = payload.get("reboot")
    if mode is None:
        return None
    if outcome != "completed" or exit_code != 0 or structured_error is not None:
        return False
    return mode == "now" or reboot_pending()


def reboot_pending() -> bool:
    """Does the OS say a reboot is pending? On Windows its pending-reboot keys; elsewhere the file
    ``RMM_AGENT_REBOOT_REQUIRED_PATH`` names (Debian's ``/var/run/reboot-required`` by default)."""
    if not WINDOWS:
        return os.path.exists(os.environ.get("RMM_AGENT_REBOOT_REQUIRED_PATH", REBOOT_REQUIRED_PATH))
    import winreg  # Windows' standard library only

    places = [(key, None) for key in WINDOWS_REBOOT_KEYS] + [(WINDOWS_SESSION_MANAGER, "PendingFileRenameOperations")]
    for path, value in places:
        try:
            with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, path) as key:
                if value is None or winreg.QueryValueEx(key, value)[0]:
                    return True
        except OSError:  # no such key or value: not this one
            continue
    return False
