"""The engine's pieces for recurring work (rmm.engine.services.recurring): offsets deterministic
and spread, each slot due once however the ticks fall, the next slot, intervals checked naming the
field, and which due assets the engine would take (kill switches, capability, retired, busy) in a
fixed number of queries."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from rmm.core.errors import InvalidInput
from rmm.engine.services import kill_switches, recurring
from rmm.inventory.models import Agent, Asset
from tests.helpers import make_agent

DAY = 86_400


def test_offsets_are_deterministic_in_range_and_spread():
    offsets = [recurring.offset(DAY, "schedule", uuid.UUID(int=n)) for n in range(10_000)]
    assert all(0 <= offset < DAY for offset in offsets)
    assert offsets[:10] == [recurring.offset(DAY, "schedule", uuid.UUID(int=n)) for n in range(10)]
    assert offsets[:10] != [recurring.offset(DAY, "other", uuid.UUID(int=n)) for n in range(10)]
    per_hour = Counter(offset // 3600 for offset in offsets)
    assert len(per_hour) == 24 and min(per_hour.values()) > 350 and max(per_hour.values()) < 490


def test_a_slot_is_due_once_whatever_the_window():
    since = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    offset = int(since.timestamp()) % 3600 + 90  # 90 s after ``since``
    assert not recurring.is_due(offset, 3600, since, since + timedelta(seconds=89))
    assert recurring.is_due(offset, 3600, since, since + timedelta(seconds=90))  # the end is in
    assert not recurring.is_due(offset, 3600, since + timedelta(seconds=90), since + timedelta(seconds=91))
    # a window of five intervals (ticks missed) is due once, not five times: it is one boolean
    assert recurring.is_due(offset, 3600, since, since + timedelta(hours=5))


def test_next_at_is_the_first_slot_after_now():
    now = datetime(2026, 12, 7, 12, 0, 30, tzinfo=UTC)
    offset = recurring.offset(3600, "a", "b")
    first = recurring.next_at(offset, 3600, now)
    assert now < first <= now + timedelta(seconds=3600)
    assert int(first.timestamp()) % 3600 == offset
    assert recurring.is_due(offset, 3600, now, first) and not recurring.is_due(
        offset, 3600, now, first - timedelta(seconds=1)
    )


def test_check_interval_names_the_field():
    assert recurring.check_interval(900, "interval_seconds", 900) == 900
    for bad in (899, 30 * DAY + 1, "900", 900.0, True, None):
        with pytest.raises(InvalidInput) as refused:
            recurring.check_interval(bad, "interval_seconds", 900)
        assert refused.value.field == "interval_seconds"


@pytest.fixture
def assets(site, other_site):
    """Four assets of site alpha whose agents report structured results, one of beta's."""
    made = []
    for n, where in enumerate([site] * 4 + [other_site]):
        agent, _ = make_agent(where, f"rec-{n}")
        Agent.objects.filter(pk=agent.pk).update(capabilities="structured_result", protocol=2)
        made.append(agent.asset_id)
    return made


def rows(ids):
    found = {a.pk: a for a in Asset.objects.filter(pk__in=ids).only("id", "site_id", "retired_at")}
    return [found[pk] for pk in ids]


def test_creatable_leaves_out_what_the_engine_would_refuse_and_says_why(assets, caller):
    admin = caller("admin", "admin")
    switched, lacking, retired, busy, elsewhere = assets
    kill_switches.engage(admin.user, scope="asset", target=str(switched), reason="isolating")
    Agent.objects.filter(asset_id=lacking).update(capabilities="reboot")
    Asset.objects.filter(pk=retired).update(retired_at=timezone.now())
    given = rows(assets)
    with CaptureQueriesContext(connection) as queries:
        found = recurring.creatable("patch_scan", given, busy=[busy])
    assert len(queries) == 2  # the engaged switches, the agents' capabilities
    assert [asset.pk for asset in found.ready] == [elsewhere]
    assert {pk: skip.why for pk, skip in found.skipped.items()} == {
        switched: recurring.KILL_SWITCH,
        lacking: recurring.INCAPABLE,
        retired: recurring.RETIRED,
        busy: recurring.BUSY,
    }
    assert found.skipped[switched].reason == "kill switch engaged on asset rec-0"
    assert found.skipped[lacking].reason == "the agent does not report the structured_result capability"
    assert found.count(recurring.KILL_SWITCH) == 1 and found.count(recurring.BUSY) == 1


def test_a_site_switch_covers_that_sites_assets_only(assets, caller):
    admin = caller("admin", "admin")
    kill_switches.engage(admin.user, scope="site", target="alpha", reason="incident")
    found = recurring.creatable("patch_scan", rows(assets))
    assert [asset.pk for asset in found.ready] == [assets[4]]
    assert {skip.reason for skip in found.skipped.values()} == {"kill switch engaged on site alpha"}
    kill_switches.engage(admin.user, scope="global", target="", reason="everything")
    assert recurring.creatable("patch_scan", rows(assets)).ready == []


def test_a_kind_that_needs_no_capability_takes_any_agent(assets):
    Agent.objects.filter(asset_id__in=assets).update(capabilities="")
    assert [asset.pk for asset in recurring.creatable("profile_audit", rows(assets)).ready] == assets
