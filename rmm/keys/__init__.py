"""Keys: the Django secret key (dev default), and the server's signing keys (this app).

Importing this package loads nothing of Django's, so that the settings can use
:func:`load_or_create_secret_key`; the signing keys live in :mod:`rmm.keys.keyset` (the key set
each process signs and verifies with), :mod:`rmm.keys.store` (where the private halves come from)
and :mod:`rmm.keys.services` (creating, rotating and retiring keys).
"""

import contextlib
import os
import secrets
import tempfile
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` readable by this account only, whole or not at all, never over an existing
    file (FileExistsError): written to a temporary file, then linked into place."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)
    finally:
        os.unlink(tmp)


def load_or_create_secret_key(var_dir: Path) -> str:
    path = Path(var_dir) / "keys" / "django_secret_key"
    if not path.exists():
        with contextlib.suppress(FileExistsError):  # another process created it first
            write_private(path, secrets.token_urlsafe(50).encode())
    return path.read_text().strip()
