"""Scheduled audits: offsets spread over the interval (10,000 assets never fire together), a due
assignment makes audit jobs through the engine under its PSA task, an expired task stops the
schedule with the reason (history, API), and a kill switch skips the assets it covers."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.utils import timezone

from profiles import scheduling
from profiles import services as profiles
from profiles.models import AssetConfigurationProfile, ConfigurationAuditJob, ProfileAuditSchedule
from rmm.authority import services as authority
from rmm.engine.services import kill_switches, recurring
from rmm.history.models import HistoryEvent
from tests.helpers import approved_authority, make_agent
from tests.support.profiles import approved_key

DAY = 86_400


def test_ten_thousand_offsets_spread_over_the_day():
    assignment = uuid.UUID(int=15)
    offsets = [recurring.offset(DAY, assignment, uuid.UUID(int=n)) for n in range(10_000)]
    assert all(0 <= offset < DAY for offset in offsets)
    assert max(Counter(offsets).values()) <= 4  # no second holds more than a handful
    per_minute = Counter(offset // 60 for offset in offsets)
    assert max(per_minute.values()) <= 20  # ~7 a minute on average
    per_hour = Counter(offset // 3600 for offset in offsets)
    assert len(per_hour) == 24 and min(per_hour.values()) > 350 and max(per_hour.values()) < 490  # ~417
    # the same every time, and another assignment spreads the same assets differently
    assert offsets[:5] == [recurring.offset(DAY, assignment, uuid.UUID(int=n)) for n in range(5)]
    assert offsets[:5] != [recurring.offset(DAY, uuid.UUID(int=16), uuid.UUID(int=n)) for n in range(5)]


def test_a_day_of_one_minute_ticks_makes_each_asset_due_exactly_once():
    start = timezone.now().replace(microsecond=0)
    assignment = uuid.uuid4()
    offsets = [recurring.offset(DAY, assignment, uuid.UUID(int=n)) for n in range(2_000)]
    counts = Counter()
    for tick in range(DAY // 60):
        since, until = start + timedelta(minutes=tick), start + timedelta(minutes=tick + 1)
        counts.update(n for n, offset in enumerate(offsets) if recurring.is_due(offset, DAY, since, until))
    assert len(counts) == 2_000 and set(counts.values()) == {1}


@pytest.fixture
def w(caller, site):
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    agents = [make_agent(site, f"web-{n:02}")[0] for n in range(3)]
    task = approved_authority(site, psa.user)
    approved_key(tech.user, boss.user, name="test.echo", read='printf "%s\\n" x\n', parameters=("value",))
    profile = profiles.create_profile(
        tech.user,
        name="baseline",
        profile_type="hardening",
        items=[{"config_key": "test.echo", "parameters": {"value": "p"}, "desired_value": "x", "comparison": "equals"}],
    )
    assignment = AssetConfigurationProfile.objects.create(
        profile=profile, site=site, psa_task=task, status="active", requested_by=tech.user, audit_interval_seconds=300
    )
    now = timezone.now()
    # made before the window, the cursor one interval back: every asset's slot falls in it
    AssetConfigurationProfile.objects.filter(pk=assignment.pk).update(updated_at=now - timedelta(hours=1))
    ProfileAuditSchedule.objects.create(name="audits", dispatched_until=now - timedelta(seconds=300))
    return SimpleNamespace(
        site=site, psa=psa, tech=tech, agents=agents, task=task, assignment=assignment, profile=profile, now=now
    )


def test_a_due_assignment_makes_audit_jobs_through_the_engine(w):
    jobs = scheduling.dispatch_due(w.now)
    assert len(jobs) == 3
    rows = ConfigurationAuditJob.objects.filter(assignment=w.assignment)
    assert {job.asset_id for job in rows} == {agent.asset_id for agent in w.agents}
    assert {(job.psa_task_id, job.requested_by_id, job.status) for job in rows} == {
        (w.task.pk, w.tech.user.pk, "queued")
    }
    created = HistoryEvent.objects.filter(action="job.created", payload__kind="profile_audit")
    assert created.count() == 3 and {e.actor for e in created} == {"user:tech"}
    # the window is spent: the same tick again makes nothing
    assert scheduling.dispatch_due(w.now) == []
    # the next interval: each asset is due again, but its audit is still queued, so none piles up
    assert scheduling.dispatch_due(w.now + timedelta(seconds=300)) == []
    assert rows.count() == 3
    ConfigurationAuditJob.objects.update(status="succeeded")
    assert len(scheduling.dispatch_due(w.now + timedelta(seconds=600))) == 3


def test_an_expired_task_stops_the_schedule_with_the_reason(w):
    authority.upsert_task(
        w.psa.user,
        w.task.pk,
        case_id=w.task.case_id,
        title="Run fix",
        status="approved",
        expires_at=w.now - timedelta(seconds=1),
    )
    assert scheduling.dispatch_due(w.now) == []
    assert not ConfigurationAuditJob.objects.exists()
    w.assignment.refresh_from_db()
    assert w.assignment.status == "stopped"
    assert w.assignment.status_reason.startswith("authority withdrawn: ")
    assert "expired" in w.assignment.status_reason
    stopped = HistoryEvent.objects.get(action="profile_assignment.stopped")
    assert stopped.actor == "system" and stopped.payload["reason"] == w.assignment.status_reason
    body = w.tech.get(f"/api/v1/profile-assignments/{w.assignment.pk}/").json()
    assert body["schedule_state"] == "stopped"
    assert body["schedule_stopped_reason"] == w.assignment.status_reason
    assert body["next_audit_at"] is None
    # and nothing later either
    assert scheduling.dispatch_due(w.now + timedelta(days=1)) == []


def test_a_kill_switch_skips_the_assets_it_covers(w, caller):
    admin = caller("admin", "admin")
    switched = w.agents[0].asset_id
    kill_switches.engage(admin.user, scope="asset", target=str(switched), reason="incident 7")
    jobs = scheduling.dispatch_due(w.now)
    assert {job.asset_id for job in jobs} == {agent.asset_id for agent in w.agents[1:]}
    skipped = HistoryEvent.objects.get(action="profile_assignment.audit_skipped")
    assert list(skipped.payload["assets"]) == [str(switched)]
    assert skipped.payload["assets"][str(switched)].startswith("kill switch engaged on ")


def test_an_asset_assignment_shows_its_schedule(w):
    one = AssetConfigurationProfile.objects.create(
        profile=w.profile, asset=w.agents[0].asset, psa_task=w.task, status="active", requested_by=w.tech.user
    )
    body = w.tech.get(f"/api/v1/profile-assignments/{one.pk}/").json()
    assert body["schedule_state"] == "scheduled" and body["schedule_stopped_reason"] == ""
    due = scheduling.next_audit_at(one, one.asset_id)
    assert body["next_audit_at"] == due.isoformat().replace("+00:00", "Z")
    assert timezone.now() < due <= timezone.now() + timedelta(days=1)
    offset = recurring.offset(DAY, one.pk, one.asset_id)
    assert int(due.timestamp()) % DAY == offset


def test_an_audit_the_engine_refuses_stops_the_schedule_with_the_reason(w):
    """The requester left (deactivated): the engine refuses the scheduled audit; the assignment's
    schedule stops saying why rather than being refused again every interval."""
    type(w.tech.user).objects.filter(pk=w.tech.user.pk).update(is_active=False)
    assert scheduling.dispatch_due(w.now) == []
    assert not ConfigurationAuditJob.objects.exists()
    w.assignment.refresh_from_db()
    assert w.assignment.status == "stopped"
    assert w.assignment.status_reason == "the engine refused its scheduled audit: Your role may not request jobs."
    stopped = HistoryEvent.objects.get(action="profile_assignment.stopped")
    assert stopped.actor == "system" and stopped.payload["reason"] == w.assignment.status_reason
    refused = HistoryEvent.objects.filter(action__startswith="refused.profile_audit_job.create").count()
    assert refused == 1
    assert scheduling.dispatch_due(w.now + timedelta(seconds=300)) == []
    assert HistoryEvent.objects.filter(action__startswith="refused.profile_audit_job.create").count() == refused


def test_the_minute_reads_only_the_asset_columns_it_needs(w):
    """Every minute reads every covered asset of every live site assignment: the id, the site and
    whether it is retired, not whole rows (docs/performance.md)."""
    due = scheduling.due_pairs(w.now, w.now - timedelta(seconds=300))
    assets = due[AssetConfigurationProfile.objects.get(pk=w.assignment.pk)]
    assert {asset.pk for asset in assets} == {agent.asset_id for agent in w.agents}
    assert all("hostname" in asset.get_deferred_fields() for asset in assets)
