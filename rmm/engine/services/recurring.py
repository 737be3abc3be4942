"""Recurring work on many assets (scan schedules, scheduled audits): when each asset is due, and
which of the due assets the engine would take.

A domain app's per-minute dispatcher gives every asset its own moment in the interval (a hash of
keys the app picks, so the same on every run and spread evenly), keeps a cursor, and each tick
creates jobs for the assets whose moment fell in (cursor, now]. Before asking the engine, it leaves
out the assets the engine would refuse (an engaged kill switch, an agent without the kind's
capability, a retired asset) and those still busy with the previous run: one refused asset would
refuse the whole batch. The engine still checks every law when the jobs are created.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from rmm.core.errors import InvalidInput
from rmm.engine import registry
from rmm.engine.models import KillSwitch
from rmm.engine.services.creating import capable_assets
from rmm.inventory.models import Asset

MAX_INTERVAL = 30 * 86_400
KILL_SWITCH, INCAPABLE, RETIRED, BUSY = "kill_switch", "incapable", "retired", "busy"


def offset(interval: int, *keys) -> int:
    """The second in every interval at which these keys (e.g. an assignment and an asset) are due:
    the sha256 of the keys modulo the interval, so deterministic and evenly spread."""
    digest = hashlib.sha256(":".join(str(key) for key in keys).encode()).digest()
    return int.from_bytes(digest[:8], "big") % interval


def _slot(moment: datetime, offset: int, interval: int) -> int:
    """The number of the newest slot (offset + k × interval, in epoch seconds) at or before ``moment``."""
    return (int(moment.timestamp()) - offset) // interval


def is_due(offset: int, interval: int, since: datetime, until: datetime) -> bool:
    """Did a slot fall in (since, until]? A window longer than the interval is due once: a missed
    tick is caught up once, never twice."""
    return _slot(until, offset, interval) > _slot(since, offset, interval)


def next_at(offset: int, interval: int, now: datetime) -> datetime:
    """The first slot after ``now``."""
    start = (_slot(now, offset, interval) + 1) * interval + offset
    return datetime.fromtimestamp(start, tz=now.tzinfo)


def check_interval(value, field: str, minimum: int, maximum: int = MAX_INTERVAL) -> int:
    """Whole seconds in [minimum, maximum], else a 400 naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise InvalidInput(f"Whole seconds from {minimum} to {maximum} ({maximum // 86_400} days).", field=field)
    return value


@dataclass(frozen=True)
class Skip:
    """Why an asset gets no job this tick: ``why`` is one of KILL_SWITCH, INCAPABLE, RETIRED, BUSY."""

    why: str
    reason: str


@dataclass
class Creatable:
    ready: list[Asset] = field(default_factory=list)
    skipped: dict = field(default_factory=dict)  # asset id -> Skip

    def count(self, why: str) -> int:
        return sum(1 for skip in self.skipped.values() if skip.why == why)


def creatable(kind: str, assets: Iterable[Asset], busy: Iterable | Mapping | None = None) -> Creatable:
    """Of these assets (rows with ``site_id`` and ``retired_at``), the ones a job of ``kind`` may be
    created for now, in their order, and the others with the reason: two queries whatever their
    number (engaged kill switches, agents' capabilities). ``busy``: asset ids still running the
    previous one, or asset id -> why it is busy (other work there that this job must not race)."""
    assets = list(assets)
    if not isinstance(busy, Mapping):
        busy = dict.fromkeys(busy or (), "its previous one is still active")
    switches = list(
        KillSwitch.objects.filter(released_at__isnull=True).select_related("site", "asset").order_by("engaged_at")
    )
    job_kind = registry.get(kind)
    capable = capable_assets(job_kind, [asset.pk for asset in assets])
    incapable = f"the agent does not report the {job_kind.capability} capability"
    result = Creatable()
    for asset in assets:
        switch = next((s for s in switches if s.covers(asset.site_id, asset.pk)), None)
        if asset.retired_at is not None:
            result.skipped[asset.pk] = Skip(RETIRED, "asset retired")
        elif switch is not None:
            result.skipped[asset.pk] = Skip(KILL_SWITCH, f"kill switch engaged on {switch.target_label}")
        elif asset.pk not in capable:
            result.skipped[asset.pk] = Skip(INCAPABLE, incapable)
        elif asset.pk in busy:
            result.skipped[asset.pk] = Skip(BUSY, busy[asset.pk])
        else:
            result.ready.append(asset)
    return result
