"""An asset's actual state as its agent reports it: the summary facts of protocol v1 (one blob)
and the fact namespaces of protocol v2 (hashes, bodies, RFC 7386 patches), each checked before it
is stored, and recorded in the history when the asset's summary changes."""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.db import transaction

from rmm.core.errors import InvalidInput
from rmm.core.text import unstorable
from rmm.history import services as history
from rmm.inventory import namespaces as fact_namespaces
from rmm.inventory.models import Agent, Asset, AssetFacts
from rmm_agent.protocol import (
    MAX_FACTS_BYTES,
    MAX_FACTS_DEPTH,
    MAX_HOSTNAME_CHARS,
    MAX_NAMESPACE_BYTES,
    MAX_NAMESPACES,
    NAMESPACE_RE,
    canonical_json,
    merge_patch,
)
from rmm_agent.protocol import facts_hash as compute_facts_hash


def clean_facts(facts) -> dict:
    """Facts as both databases can store them, or a 400 naming what is wrong: a JSON object of
    at most MAX_FACTS_BYTES (canonical JSON), nested at most MAX_FACTS_DEPTH deep, with no NUL or
    lone surrogate in any key or string, finite numbers, and a hostname (when there is one) of
    at most MAX_HOSTNAME_CHARS characters. Refused, not cut: facts are the asset's identity."""
    if not isinstance(facts, dict):
        raise InvalidInput("Facts must be a JSON object.", field="facts")
    problem = unstorable(facts, "facts", max_depth=MAX_FACTS_DEPTH)
    if problem:
        raise InvalidInput(f"Facts cannot be stored: {problem}.", field="facts")
    hostname = facts.get("hostname")
    if hostname is not None and not isinstance(hostname, str):
        raise InvalidInput("Facts hostname must be a string.", field="facts")
    if hostname is not None and len(hostname) > MAX_HOSTNAME_CHARS:
        raise InvalidInput(f"Facts hostname is longer than {MAX_HOSTNAME_CHARS} characters.", field="facts")
    if len(canonical_json(facts)) > MAX_FACTS_BYTES:
        raise InvalidInput(f"Facts are larger than {MAX_FACTS_BYTES} bytes.", field="facts")
    return facts


def record_facts(agent: Agent, facts: dict, now, stored_hash: str | None = None) -> None:
    """Actual state from the report of an agent that sends its facts as one blob (protocol v1):
    stored whole as the asset's summary facts.

    Facts identical to those stored (``stored_hash``, as the check-in read it) change nothing and
    record nothing: an agent resends its facts whenever it lacks the server's acknowledgement.
    """
    facts = clean_facts(facts)
    digest = compute_facts_hash(facts)
    if digest == stored_hash:
        return
    AssetFacts.objects.update_or_create(
        asset_id=agent.asset_id, defaults={"facts": facts, "facts_hash": digest, "reported_at": now}
    )
    _facts_recorded(agent, facts, {"facts_hash": digest})


def _facts_recorded(agent: Agent, summary: dict, payload: dict) -> None:
    """The asset's identity fields that its new summary facts change, and the history's record."""
    changes = {}
    for field, key, size in (("hostname", "hostname", 255), ("os", "os", 100), ("architecture", "architecture", 50)):
        value = str(summary.get(key) or "")[:size]
        if value and getattr(agent.asset, field) != value:
            changes[field] = value
    if changes:
        Asset.objects.filter(pk=agent.asset_id).update(**changes)
    history.append(
        history.actor_of(agent),
        "asset.facts_reported",
        agent.asset,
        site_id=agent.asset.site_id,
        payload={**payload, "changed": sorted(changes)},
    )


HASH_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class FactReport:
    """One namespace of a heartbeat: its hash, and its body or a patch (RFC 7386, against the
    body the server last acknowledged) when the agent sent one."""

    name: str
    hash: str
    body: dict | None
    patch: dict | None = None


def clean_fact_reports(value) -> list[FactReport]:
    """A heartbeat's ``namespaces`` as the server can use them, or a 400 naming the field: an
    object of at most MAX_NAMESPACES namespaces, each ``{"hash": <sha256 hex>}`` and maybe a
    ``body`` or a ``patch`` (an object of at most MAX_NAMESPACE_BYTES, all of them together at
    most MAX_FACTS_BYTES, storable; a body matching its hash and passing its namespace's
    validator, a patched body checked when it is applied). A namespace no app registered is left
    out: the server neither stores nor asks for it."""
    if not isinstance(value, dict):
        raise InvalidInput("Namespaces must be a JSON object.", field="namespaces")
    if len(value) > MAX_NAMESPACES:
        raise InvalidInput(f"More than {MAX_NAMESPACES} namespaces.", field="namespaces")
    reports, total = [], 0
    for name, entry in value.items():
        if not NAMESPACE_RE.fullmatch(name):
            raise InvalidInput(f"{name[:40]!r} is not a namespace name.", field="namespaces")
        where = f"namespaces.{name}"
        digest = entry.get("hash") if isinstance(entry, dict) else None
        if not isinstance(digest, str) or not HASH_RE.fullmatch(digest):
            raise InvalidInput("Must be the sha256 (hex) of the namespace's body.", field=f"{where}.hash")
        if "body" in entry and "patch" in entry:
            raise InvalidInput("A body or a patch, not both.", field=where)
        kind = "patch" if "patch" in entry else "body"
        sent = entry.get(kind)
        if kind in entry and not isinstance(sent, dict):
            raise InvalidInput("Must be a JSON object.", field=f"{where}.{kind}")
        if sent is not None:
            problem = unstorable(sent, f"{where}.{kind}", max_depth=MAX_FACTS_DEPTH)
            if problem:
                raise InvalidInput(f"Cannot be stored: {problem}.", field=f"{where}.{kind}")
            size = len(canonical_json(sent))
            if size > MAX_NAMESPACE_BYTES:
                raise InvalidInput(f"Larger than {MAX_NAMESPACE_BYTES} bytes.", field=f"{where}.{kind}")
            total += size
            if total > MAX_FACTS_BYTES:
                raise InvalidInput(f"The bodies are larger than {MAX_FACTS_BYTES} bytes together.", field="namespaces")
        body = sent if kind == "body" else None
        if body is not None and compute_facts_hash(body) != digest:
            raise InvalidInput("Does not match the namespace's body.", field=f"{where}.hash")
        namespace = fact_namespaces.get(name)
        if namespace is None:
            continue
        if body is not None:
            try:
                body = namespace.validate(body)
            except ValueError as exc:
                raise InvalidInput(f"Cannot be used: {exc}.", field=f"{where}.body") from exc
        reports.append(FactReport(name, digest, body, sent if kind == "patch" else None))
    return reports


def record_namespaces(agent: Agent, reports: list[FactReport], now, stored: dict) -> list[str]:
    """Actual state from a heartbeat's fact namespaces; returns the names the server wants in
    full next time: a hash that differs from the stored one with nothing sent (after a loss of
    the server's facts, say), or a patch that does not give the body of its hash. Each changed
    body is handed to its namespace's handler and stored with its hash, and recorded in the
    history only when the asset's summary facts changed (the first heartbeat after enrollment
    restates the enrolled facts: stored, not recorded); ``stored`` is each
    namespace's stored hash, as the check-in read it. A constant number of queries however many
    namespaces changed: none when none did."""
    wanted = [r.name for r in reports if r.body is None and r.patch is None and stored.get(r.name) != r.hash]
    changed = [r for r in reports if (r.body is not None or r.patch is not None) and stored.get(r.name) != r.hash]
    if not changed:
        return sorted(wanted)
    with transaction.atomic():
        row = AssetFacts.objects.select_for_update().filter(asset_id=agent.asset_id).first()
        row = row or AssetFacts(asset_id=agent.asset_id, facts={}, namespaces={}, namespace_hashes={})
        summary, bodies, hashes = dict(row.facts), dict(row.namespaces), dict(row.namespace_hashes)
        applied = []
        for report in changed:
            body = report.body if report.body is not None else _patched(report, bodies.get(report.name))
            if body is None:
                wanted.append(report.name)
                continue
            bodies[report.name], hashes[report.name] = body, report.hash
            summary.update(fact_namespaces.get(report.name).handle(body))
            applied.append(report.name)
        if applied:
            before, row.facts, row.facts_hash = row.facts_hash, summary, compute_facts_hash(summary)
            row.namespaces, row.namespace_hashes, row.reported_at = bodies, hashes, now
            row.save()
            if row.facts_hash != before:  # what the summary does not show is stored, not recorded
                _facts_recorded(agent, summary, {"facts_hash": row.facts_hash, "namespaces": applied})
    return sorted(wanted)


def _patched(report: FactReport, base) -> dict | None:
    """The body a patch makes of the stored one, if it is the body of the report's hash and its
    namespace can use it; else None (the server then asks for the body in full)."""
    if not isinstance(base, dict):
        return None
    body = merge_patch(base, report.patch)
    if compute_facts_hash(body) != report.hash or len(canonical_json(body)) > MAX_NAMESPACE_BYTES:
        return None
    try:
        return fact_namespaces.get(report.name).validate(body)
    except ValueError:
        return None
