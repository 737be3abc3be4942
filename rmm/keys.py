"""Dev-default secrets: generated on first use into the ignored ``var/`` folder."""

import contextlib
import os
import secrets
from pathlib import Path


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def load_or_create_secret_key(var_dir: Path) -> str:
    path = Path(var_dir) / "keys" / "django_secret_key"
    if not path.exists():
        with contextlib.suppress(FileExistsError):  # another process created it first
            _write_private(path, secrets.token_urlsafe(50).encode())
    return path.read_text().strip()


def load_or_create_signing_key(path: str | Path):
    """The server's Ed25519 instruction-signing key (PEM, PKCS8, unencrypted)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        with contextlib.suppress(FileExistsError):
            _write_private(path, pem)
    return serialization.load_pem_private_key(path.read_bytes(), password=None)
