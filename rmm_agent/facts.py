"""Facts the agent reports about its host (actual state; the server never invents these).

Facts are hashed and only sent when the hash changes, so every fact here must be stable:
no uptime counters, no temporary IPv6 privacy addresses, no values that need network traffic.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import platform
import socket
from datetime import UTC, datetime
from pathlib import Path

from . import __version__
from .protocol import MAX_FACT_ADDRESSES, iso_utc, sendable_text

PROC = Path("/proc")

# /proc/net/if_inet6 flags for addresses that come and go on their own.
_IFA_F_TEMPORARY = 0x01
_IFA_F_DADFAILED = 0x08
_IFA_F_TENTATIVE = 0x40


def collect_namespaces(hostname: str | None = None) -> dict[str, dict]:
    """The host's facts by namespace (``FACT_NAMESPACES``), each hashed and sent on its own;
    ``hostname`` overrides the detected name. Strings the server could not store (NUL, an
    undecodable name) are sent escaped (``sendable_text``). Only what the agent reads cheaply by
    itself: what needs a script comes from approved scripts' results, never from here."""
    namespaces = {
        "os": {
            "os": platform.system(),
            "os_version": os_version(),
            "kernel": platform.release(),
            "boot_time": boot_time(),
        },
        "hardware": {"architecture": platform.machine(), "cpu_count": os.cpu_count()},
        "network": {"hostname": hostname or socket.gethostname(), "addresses": local_addresses()[:MAX_FACT_ADDRESSES]},
        "agent": {"agent_version": __version__},
    }
    return {
        name: {key: sendable_text(value, 1000) if isinstance(value, str) else value for key, value in body.items()}
        for name, body in namespaces.items()
    }


def collect_facts(hostname: str | None = None) -> dict:
    """All namespaces' facts in one object, as enrollment sends them."""
    return {key: value for body in collect_namespaces(hostname).values() for key, value in body.items()}


def os_version() -> str:
    """PRETTY_NAME from os-release where there is one, else the platform's version string."""
    try:
        pretty = platform.freedesktop_os_release().get("PRETTY_NAME")
    except (OSError, UnicodeDecodeError):
        pretty = None
    return pretty or platform.version()


def boot_time(proc: Path = PROC) -> str | None:
    """Boot time in UTC from /proc/stat, so the server can derive uptime without churn."""
    try:
        for line in (proc / "stat").read_text().splitlines():
            if line.startswith("btime "):
                seconds = int(line.split()[1])
                return iso_utc(datetime.fromtimestamp(seconds, tz=UTC))
    except (OSError, ValueError, IndexError):
        return None
    return None


def local_addresses(proc: Path = PROC) -> list[str]:
    """Non-loopback, non-link-local addresses of this host, read from /proc (no traffic).

    Returns an empty list where /proc is unavailable.
    """
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    found.update(_ipv4_from_fib_trie(proc / "net" / "fib_trie"))
    found.update(_ipv6_from_if_inet6(proc / "net" / "if_inet6"))
    usable = [
        address for address in found if not (address.is_loopback or address.is_link_local or address.is_unspecified)
    ]
    usable.sort(key=lambda address: (address.version, int(address)))
    return [str(address) for address in usable]


def _ipv4_from_fib_trie(path: Path) -> set[ipaddress.IPv4Address]:
    """Local IPv4 addresses: the trie leaf directly above a '/32 host LOCAL' line."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return set()
    addresses: set[ipaddress.IPv4Address] = set()
    previous = ""
    for line in lines:
        stripped = line.strip()
        if stripped == "/32 host LOCAL" and previous.startswith("|--"):
            with contextlib.suppress(ValueError):
                addresses.add(ipaddress.IPv4Address(previous[3:].strip()))
        previous = stripped
    return addresses


def _ipv6_from_if_inet6(path: Path) -> set[ipaddress.IPv6Address]:
    """Stable IPv6 addresses (temporary, tentative and failed ones are skipped)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return set()
    addresses: set[ipaddress.IPv6Address] = set()
    for line in lines:
        fields = line.split()
        if len(fields) < 6:
            continue
        try:
            address = ipaddress.IPv6Address(int(fields[0], 16))
            flags = int(fields[4], 16)
        except ValueError:
            continue
        if flags & (_IFA_F_TEMPORARY | _IFA_F_DADFAILED | _IFA_F_TENTATIVE):
            continue
        addresses.add(address)
    return addresses
