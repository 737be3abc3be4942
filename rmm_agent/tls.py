"""The agent's transport policy (docs/agent.md, Transport security), in one place.

The agent's secret, every script and every result travel in its HTTP calls, so the server must be
reached over https with a certificate the agent trusts: the system trust store, or the CA file
pinned at enrollment (``--ca-file``, copied into the state directory). Plain http is refused,
except to a loopback address (the embedded default, ``make run``, the tests) or where the
operator accepted it at enrollment (``--allow-insecure-http``).
"""

from __future__ import annotations

import ipaddress
import ssl
import urllib.parse

LOOPBACK_NAMES = ("localhost",)


class InsecureServer(ValueError):
    """The server URL is not one the agent may talk to (not http(s), or plain http refused)."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine: ``localhost``, 127.0.0.0/8 or ::1."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_server(url: str, *, allow_insecure_http: bool = False) -> None:
    """Refuse a server URL the policy does not allow, saying why and what to do instead."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InsecureServer(f"the server URL must be https://HOST (or http:// to this machine), not {url!r}")
    if parts.scheme == "http" and not allow_insecure_http and not is_loopback(parts.hostname):
        raise InsecureServer(
            f"refusing plain http to {parts.hostname}: the agent's secret, the scripts and their output would "
            "travel in clear. Use https://, or enroll with --allow-insecure-http to accept that"
        )


def context(ca_file: str | None) -> ssl.SSLContext:
    """A client context that verifies the server's certificate and name: against ``ca_file`` alone
    when one is pinned, else the system trust store; TLS 1.2 at least."""
    made = ssl.create_default_context(cafile=ca_file)
    made.minimum_version = ssl.TLSVersion.TLSv1_2
    return made


def check_ca_file(path: str) -> None:
    """Refuse a CA file that holds no certificate a context can load (before it is pinned)."""
    try:
        loaded = context(path)
    except (OSError, ssl.SSLError) as exc:
        raise InsecureServer(f"CA file {path} is not a PEM bundle of CA certificates: {exc}") from exc
    if not loaded.cert_store_stats()["x509"]:
        raise InsecureServer(f"CA file {path} holds no certificate")


def untrusted(error: BaseException) -> str | None:
    """The clear message for a certificate the agent does not trust, or None for other errors."""
    if not isinstance(error, ssl.SSLCertVerificationError):
        return None
    return (
        f"the server's certificate is not trusted ({error.verify_message}; CERTIFICATE_VERIFY_FAILED): "
        "enroll with --ca-file naming the CA that issued it, or add that CA to the system trust store"
    )
