"""The fact namespaces the server takes from agents, each registered by the app it belongs to
(docs/architecture.md, Fact namespaces). An app registers a name, a validator and a handler in
its ``AppConfig.ready``; the inventory app registers the agent's built-ins (``os``, ``hardware``,
``network``, ``agent``). The inventory stores every registered namespace's body with its hash
(``AssetFacts``); a namespace nobody registered is not stored.

Only facts an agent reads cheaply by itself belong here. What needs a script (installed
software, available updates, configuration reads, detection checks) comes from approved
scripts' structured results, stored by the app that asked: one source per kind of data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rmm_agent.protocol import MAX_FACT_ADDRESSES, MAX_HOSTNAME_CHARS, NAMESPACE_RE


@dataclass(frozen=True)
class Namespace:
    """``validate(body)`` returns the body to store or raises ValueError with the reason (the
    heartbeat is answered 400 naming ``namespaces.<name>.body``, and nothing changes).
    ``handle(body)`` returns what the asset's summary facts (``AssetFacts.facts``, the asset API's
    ``facts``) show of it, often nothing. Both run on the agent's hot path, inside the
    heartbeat's one write of the facts: they must not query the database."""

    name: str
    validate: Callable[[dict], dict]
    handle: Callable[[dict], dict]


_registered: dict[str, Namespace] = {}


def register(name: str, validate: Callable[[dict], dict], handle: Callable[[dict], dict]) -> Namespace:
    """Make ``name`` a namespace the server takes from agents (once per name)."""
    if not NAMESPACE_RE.fullmatch(name):
        raise ValueError(f"{name!r} is not a namespace name ({NAMESPACE_RE.pattern})")
    if name in _registered:
        raise ValueError(f"namespace {name!r} is registered already")
    _registered[name] = Namespace(name, validate, handle)
    return _registered[name]


def unregister(name: str) -> None:
    """Forget a namespace (tests register their own and remove it afterwards)."""
    _registered.pop(name, None)


def get(name: str) -> Namespace | None:
    return _registered.get(name)


def _strings_or_null(body: dict) -> dict:
    for key, value in body.items():
        if value is not None and not isinstance(value, str | int):
            raise ValueError(f"{key} must be a string, a number or null")
    return body


def _network(body: dict) -> dict:
    hostname, addresses = body.get("hostname"), body.get("addresses", [])
    if not isinstance(hostname, str) or not hostname.strip():
        raise ValueError("hostname must be a non-empty string")
    if len(hostname) > MAX_HOSTNAME_CHARS:
        raise ValueError(f"hostname is longer than {MAX_HOSTNAME_CHARS} characters")
    if not isinstance(addresses, list) or not all(isinstance(item, str) for item in addresses):
        raise ValueError("addresses must be a list of strings")
    if len(addresses) > MAX_FACT_ADDRESSES:
        raise ValueError(f"more than {MAX_FACT_ADDRESSES} addresses")
    return body


def _summary(body: dict) -> dict:
    """A built-in namespace's keys are the asset's summary facts, as before namespaces."""
    return body


def register_builtins() -> None:
    """The namespaces the agent itself reads (rmm_agent.facts.collect_namespaces)."""
    register("os", _strings_or_null, _summary)
    register("hardware", _strings_or_null, _summary)
    register("network", _network, _summary)
    register("agent", _strings_or_null, _summary)
