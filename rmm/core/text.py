"""Text from outside (agents, scripts) as the databases can hold it.

PostgreSQL text and jsonb cannot hold NUL, and no database driver takes a lone surrogate (it is
not UTF-8). Strings an agent sends are checked with :func:`unstorable`; bytes a script printed
become display text with :func:`display_text`, which escapes reversibly (docs/evidence.md).
"""

from __future__ import annotations

import math
import re

_NOT_STORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> bool:
    """Whether both databases can hold ``text`` as it is (no NUL, no lone surrogate)."""
    return _NOT_STORABLE.search(text) is None


def unstorable(value, where: str = "", depth: int = 0, max_depth: int = 64) -> str | None:
    """Where in a parsed JSON value something cannot be stored (a NUL or a lone surrogate in a
    key or a string, a number that is not finite, nesting deeper than ``max_depth``), as a
    path like ``facts.addresses[2]`` and why; None when all of it can."""
    if depth > max_depth:
        return f"{where or 'the value'}: nested deeper than {max_depth} levels"
    if isinstance(value, str):
        return None if storable(value) else f"{where or 'the value'}: contains a NUL or a lone surrogate"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where or 'the value'}: not a finite number"
    if isinstance(value, dict):
        for key, item in value.items():
            if not storable(key):
                return f"{where or 'the value'}: a key contains a NUL or a lone surrogate"
            problem = unstorable(item, f"{where}.{key}" if where else key, depth + 1, max_depth)
            if problem:
                return problem
    if isinstance(value, list):
        for index, item in enumerate(value):
            problem = unstorable(item, f"{where}[{index}]", depth + 1, max_depth)
            if problem:
                return problem
    return None


def display_text(data: bytes) -> tuple[str, bool]:
    """(text, escaped) for bytes a script printed. UTF-8 without NUL is its own text (escaped
    False). Anything else is escaped, reversibly: each backslash is doubled, and NUL and every
    byte that is not part of valid UTF-8 become ``\\xNN`` (lowercase hex); the rest is the text.
    :func:`original_bytes` undoes it."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and "\x00" not in text:
        return text, False
    # A backslash (0x5C) or NUL is never part of a multi-byte UTF-8 sequence, so replacing them
    # first leaves every valid sequence whole for the decoder.
    escaped = data.replace(b"\\", b"\\\\").replace(b"\x00", b"\\x00")
    return escaped.decode("utf-8", errors="backslashreplace"), True


_ESCAPE = re.compile(rb"\\(\\|x([0-9a-f]{2}))")


def original_bytes(text: str, escaped: bool) -> bytes:
    """The exact bytes behind a :func:`display_text`."""
    data = text.encode("utf-8")
    if not escaped:
        return data
    return _ESCAPE.sub(lambda m: b"\\" if m.group(1) == b"\\" else bytes.fromhex(m.group(2).decode()), data)
