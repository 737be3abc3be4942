"""Files only this account may read: the server's private keys and the Django secret key.

Importing this module loads nothing of Django's, so that the settings can read the secret key;
they never write it (importing the settings writes no file): the core app creates it at the first
start of any process that has neither ``RMM_SECRET_KEY`` nor the file (rmm/core/apps.py).
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


def secret_key_path(var_dir: Path) -> Path:
    return Path(var_dir) / "keys" / "django_secret_key"


def read_secret_key(var_dir: Path) -> str:
    """The secret key kept in ``var_dir``, or "" when there is none yet."""
    try:
        return secret_key_path(var_dir).read_text().strip()
    except FileNotFoundError:
        return ""


def create_secret_key(var_dir: Path) -> str:
    """The secret key kept in ``var_dir``, generated first if there is none (once, whichever
    process comes first)."""
    with contextlib.suppress(FileExistsError):  # another process created it first
        write_private(secret_key_path(var_dir), secrets.token_urlsafe(50).encode())
    return read_secret_key(var_dir)
