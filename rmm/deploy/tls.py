"""Certificates made for the occasion: a private CA and a server certificate it issued, for
``make prod-up`` (whose agents pin the CA with ``--ca-file``) and for the tests."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rmm.core.private_files import write_private


def _pem(directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Path:
    (directory / f"{name}.key").unlink(missing_ok=True)
    write_private(
        directory / f"{name}.key",
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def certificates(
    directory: Path, *, valid: timedelta = timedelta(hours=1), name: str = "rmm test CA"
) -> tuple[Path, Path, Path]:
    """A private CA called ``name`` and a server certificate it issued for 127.0.0.1, valid for
    ``valid``: (CA certificate, server certificate, server key), as PEM files in
    ``directory`` (the keys readable by this account only)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + valid + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + valid)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _pem(directory, "ca", ca, ca_key), _pem(directory, "server", server, server_key), directory / "server.key"


def still_valid(certificate: Path, margin: timedelta = timedelta(days=1)) -> bool:
    """Whether the PEM certificate exists and stays valid for ``margin`` more."""
    if not certificate.exists():
        return False
    cert = x509.load_pem_x509_certificate(certificate.read_bytes())
    return cert.not_valid_after_utc > datetime.now(UTC) + margin
