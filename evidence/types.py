"""Evidence types are registered by the apps that produce them (in their AppConfig.ready), as job
kinds and outbox event types are: a new domain app adds its own without editing this app.

The evidence app registers ``history_anchor`` itself; anchors come with every export bundle and
are never an item of one, so that type is not ``exportable``.
"""

from __future__ import annotations

from dataclasses import dataclass

HISTORY_ANCHOR = "history_anchor"
MAX_NAME = 30  # RmmEvidence.evidence_type's max_length


@dataclass(frozen=True)
class EvidenceKind:
    name: str
    description: str
    exportable: bool


_types: dict[str, EvidenceKind] = {}


def register(name: str, description: str, *, exportable: bool = True) -> None:
    """Register an evidence type: a short snake_case name (the seed's names where it has one)."""
    if not name.replace("_", "").isalnum() or name != name.lower() or len(name) > MAX_NAME:
        raise ValueError(f"evidence type {name!r}: lower-case letters, digits and _, at most {MAX_NAME}")
    kind = EvidenceKind(name, description, exportable)
    if _types.get(name, kind) != kind:
        raise ValueError(f"evidence type {name} is registered twice")
    _types[name] = kind


def is_registered(name: str) -> bool:
    return name in _types


def names() -> list[str]:
    return sorted(_types)


def exportable() -> list[str]:
    """The types an export may ask for by name."""
    return sorted(name for name, kind in _types.items() if kind.exportable)


class LiveChoices:
    """Choices read from the registry whenever they are iterated: by each form and serializer
    built, and by the OpenAPI schema, so a type registered by any app is offered everywhere."""

    def __init__(self, exportable_only: bool = False) -> None:
        self.exportable_only = exportable_only

    def __iter__(self):
        listed = exportable() if self.exportable_only else names()
        return iter([(name, name.replace("_", " ")) for name in listed])
