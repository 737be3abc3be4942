"""Where a webhook may point (SSRF): checked when a subscription is made or changed, and again before
every attempt, since what a name resolves to can change in between (docs/integrations.md#addresses).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings

METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def refusal(url: str) -> str | None:
    """Why a webhook may not be sent to ``url``, or None when it may. Never: a scheme other than
    http(s), a name that does not resolve, a link-local, metadata, multicast, reserved or
    unspecified address, or the server's own names and addresses; loopback and private addresses
    only with ``RMM_WEBHOOK_ALLOW_PRIVATE`` (on by default with ``RMM_DEBUG``)."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        return f"Not a URL: {exc}."
    if parts.scheme not in ("http", "https"):
        return "Must be an http or https URL."
    host = parts.hostname
    if not host:
        return "Has no host."
    if parts.username or parts.password:
        return "Must not carry a user name or password; the secret signs each request."
    allow_private = settings.RMM_WEBHOOK_ALLOW_PRIVATE
    if host.rstrip(".").lower() in _own_names(allow_private):
        return f"Points at this server itself ({host})."
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except (socket.gaierror, UnicodeError, OSError) as exc:
        return f"{host} does not resolve ({exc})."
    own = _own_addresses()
    for text in sorted(found):
        address = ipaddress.ip_address(text.split("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        reason = _address_refusal(address, allow_private, own)
        if reason:
            return f"{host} resolves to {address}, {reason}."
    return None


def _address_refusal(address: Address, allow_private: bool, own: set[Address]) -> str | None:
    if address in METADATA:
        return "a cloud metadata address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_unspecified or address.is_multicast or address.is_reserved:
        return "not an address a webhook may reach"
    if address.is_loopback:
        return None if allow_private else "a loopback address (this server itself)"
    if address in own:
        return "an address of this server itself"
    if not address.is_global:
        return None if allow_private else "a private address"
    return None


def _own_names(allow_private: bool) -> set[str]:
    """The server's names: its host name and the public names it answers to (``RMM_ALLOWED_HOSTS``);
    ``localhost`` only while loopback is refused (it is allowed with private addresses). Address
    literals are judged as addresses."""
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    names |= {host.lstrip(".").lower() for host in settings.ALLOWED_HOSTS if host not in ("*", "") and not _is_ip(host)}
    return names - {"localhost", "testserver"} if allow_private else names | {"localhost"}


def _is_ip(text: str) -> bool:
    """An address literal is judged by its address, not as a name."""
    try:
        ipaddress.ip_address(text.strip("[]"))
        return True
    except ValueError:
        return False


def _own_addresses() -> set[Address]:
    """The addresses this machine's host name resolves to, loopback ones aside (judged above)."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None)
    except OSError:
        return set()
    found = {ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos}
    return {address for address in found if not address.is_loopback}
