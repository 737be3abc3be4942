"""Scheduled scans (issue 16, part 2): a standing PSA task covering a site drives a scan of each of
its assets once per interval, each at its own moment; the schedule stops, saying why, when the
task ends or a kill switch covers the site. The clock is the dispatcher's ``now``."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from patching import schedules
from patching.models import PatchInstallJob, PatchScanJob, PatchScanSchedule
from rmm.authority import services as authority
from rmm.engine.services import kill_switches, recurring
from rmm.history.models import HistoryEvent
from rmm.inventory.models import Agent
from tests.helpers import approved_authority, make_agent
from tests.patching.scanning import dpkg_document, run, scan
from tests.patching.test_patch_jobs import UPGRADES, ZZ, approve, request

HOUR = 3600


@pytest.fixture
def fleet(world):
    """Eight more agents on the site, all able to report a scan."""
    for n in range(8):
        agent, _ = make_agent(world["site"], f"sched-{n}")
        Agent.objects.filter(pk=agent.pk).update(capabilities="structured_result,reboot", protocol=2)
    return world


def create(world, who="tech", **extra):
    body = {"site": world["site"].name, "psa_task_id": str(world["task"].pk), "interval_seconds": HOUR, **extra}
    return world[who].post("/api/v1/patch-scan-schedules/", body, format="json")


def schedule_of(response) -> PatchScanSchedule:
    return PatchScanSchedule.objects.select_related("site", "psa_task__case", "created_by").get(
        pk=response.json()["id"]
    )


def scans_created() -> int:
    return PatchScanJob.objects.count()


def test_a_schedule_scans_each_asset_once_per_interval_spread_over_it(fleet):
    r = create(fleet)
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["status"] == "active" and body["interval_seconds"] == HOUR
    assert body["psa_case_id"] == str(fleet["task"].case_id) and body["site"] == "alpha"
    schedule = schedule_of(r)
    start = schedule.dispatched_until
    per_tick = []
    for minute in range(1, 61):  # one tick a minute for the whole interval
        before = scans_created()
        schedules.dispatch_all(now=start + timedelta(minutes=minute))
        per_tick.append(scans_created() - before)
    scanned = Counter(PatchScanJob.objects.values_list("asset_id", flat=True))
    assert len(scanned) == 9 and set(scanned.values()) == {1}  # every asset once
    assert max(per_tick) < 9  # never all at one moment
    assert PatchScanJob.objects.filter(psa_task=fleet["task"]).count() == 9
    shown = fleet["tech"].get(f"/api/v1/patch-scan-schedules/{schedule.pk}/").json()
    assert shown["scans_dispatched"] == 9
    assert HistoryEvent.objects.filter(action="patch_scan_schedule.dispatched").exists()
    # the next interval scans each again, once
    schedules.dispatch_all(now=start + timedelta(minutes=120))
    assert set(Counter(PatchScanJob.objects.values_list("asset_id", flat=True)).values()) == {2}


def test_ten_thousand_assets_are_spread_over_the_day():
    ids = [uuid.uuid4() for _ in range(10_000)]
    start = timezone.now()
    offsets = [recurring.offset(86400, pk) for pk in ids]
    counts = [
        sum(recurring.is_due(o, 86400, start + timedelta(minutes=m), start + timedelta(minutes=m + 1)) for o in offsets)
        for m in range(1440)
    ]
    assert sum(counts) == 10_000  # each once
    assert max(counts) < 30  # about 7 a minute, never the fleet at once


def test_a_tick_missed_catches_up_once(fleet):
    schedule = schedule_of(create(fleet))
    schedules.dispatch_all(now=schedule.dispatched_until + timedelta(hours=5))
    assert scans_created() == 9
    assert schedules.dispatch_all(now=schedule.dispatched_until + timedelta(hours=5)) == 0  # same moment: nothing


def test_the_schedule_stops_when_its_task_is_withdrawn_and_says_why(fleet):
    schedule = schedule_of(create(fleet))
    task = fleet["task"]
    authority.upsert_task(fleet["psa"].user, task.pk, case_id=task.case_id, title=task.title, status="closed")
    assert schedules.dispatch_all(now=schedule.dispatched_until + timedelta(hours=2)) == 0
    assert scans_created() == 0
    shown = fleet["tech"].get(f"/api/v1/patch-scan-schedules/{schedule.pk}/").json()
    assert shown["status"] == "stopped"
    assert shown["status_reason"] == "authority ended: PSA task is closed, not approved"
    event = HistoryEvent.objects.get(action="patch_scan_schedule.stopped")
    assert event.actor == "system" and "PSA task is closed" in event.payload["reason"]
    listed = fleet["tech"].get("/api/v1/patch-scan-schedules/?status=stopped").json()
    assert [row["id"] for row in listed["results"]] == [str(schedule.pk)]


def test_the_schedule_stops_when_its_task_expires(fleet):
    task = fleet["task"]
    expires = timezone.now() + timedelta(hours=1)
    authority.upsert_task(
        fleet["psa"].user, task.pk, case_id=task.case_id, title=task.title, status="approved", expires_at=expires
    )
    schedule = schedule_of(create(fleet))
    schedules.dispatch_all(now=schedule.dispatched_until + timedelta(minutes=30))
    before = scans_created()
    assert PatchScanSchedule.objects.get(pk=schedule.pk).status == "active"
    schedules.dispatch_all(now=expires + timedelta(minutes=1))
    schedule.refresh_from_db()
    assert schedule.status == "stopped" and schedule.status_reason.startswith("authority ended: PSA task authority")
    assert scans_created() == before


def test_a_site_kill_switch_stops_the_schedule(fleet):
    schedule = schedule_of(create(fleet))
    kill_switches.engage(fleet["tech"].user, scope="site", target="alpha", reason="incident 42")
    schedules.dispatch_all(now=schedule.dispatched_until + timedelta(hours=2))
    assert scans_created() == 0
    schedule.refresh_from_db()
    assert schedule.status == "stopped" and schedule.status_reason == "kill switch engaged on site alpha: incident 42"


def test_an_asset_kill_switch_leaves_that_asset_out(fleet):
    schedule = schedule_of(create(fleet))
    asset_id = fleet["agent"].asset_id
    kill_switches.engage(fleet["tech"].user, scope="asset", target=str(asset_id), reason="isolating")
    schedules.dispatch_all(now=schedule.dispatched_until + timedelta(hours=2))
    scanned = set(PatchScanJob.objects.values_list("asset_id", flat=True))
    assert len(scanned) == 8 and asset_id not in scanned
    assert HistoryEvent.objects.get(action="patch_scan_schedule.dispatched").payload["under_kill_switch"] == 1
    assert PatchScanSchedule.objects.get(pk=schedule.pk).status == "active"


def test_no_schedule_without_authority(fleet, other_site):
    r = create(fleet, psa_task_id=None)
    assert r.status_code == 400 and "psa_task_id" in r.json(), r.content
    elsewhere = approved_authority(other_site, fleet["psa"].user)
    r = create(fleet, psa_task_id=str(elsewhere.pk))
    assert r.status_code == 400 and "psa_task_id" in r.json(), r.content
    assert HistoryEvent.objects.filter(action="refused.patch_scan_schedule.create").count() == 2
    assert not PatchScanSchedule.objects.exists()


def test_bad_requests_are_refused_naming_the_field(fleet, caller):
    assert create(fleet, interval_seconds=60).status_code == 400
    assert "interval_seconds" in create(fleet, interval_seconds=60).json()
    assert "site" in create(fleet, site="nowhere").json()
    assert create(fleet).status_code == 201
    again = create(fleet)
    assert again.status_code == 409 and "site" in again.json()
    auditor = caller("audit", "compliance")
    assert create({**fleet, "audit": auditor}, who="audit").status_code == 403
    assert PatchScanSchedule.objects.count() == 1


def test_stop_through_the_api(fleet):
    schedule = schedule_of(create(fleet))
    url = f"/api/v1/patch-scan-schedules/{schedule.pk}/stop/"
    assert fleet["tech"].post(url, {}, format="json").status_code == 400
    r = fleet["tech"].post(url, {"reason": "agreement renegotiated"}, format="json")
    assert r.status_code == 200 and r.json()["status"] == "stopped" and r.json()["stopped_by"] == "tech"
    assert fleet["tech"].post(url, {"reason": "again"}, format="json").status_code == 409
    schedules.dispatch_all(now=timezone.now() + timedelta(hours=2))
    assert scans_created() == 0


def test_another_sites_caller_sees_no_schedule(fleet, caller, other_site):
    schedule = schedule_of(create(fleet))
    outsider = caller("outsider", "technician", sites=[other_site])
    assert outsider.get(f"/api/v1/patch-scan-schedules/{schedule.pk}/").status_code == 404
    assert outsider.get("/api/v1/patch-scan-schedules/").json()["count"] == 0
    stopped = outsider.post(f"/api/v1/patch-scan-schedules/{schedule.pk}/stop/", {"reason": "x"}, format="json")
    assert stopped.status_code == 404
    assert HistoryEvent.objects.filter(action="refused.access").exists()


def test_a_schedule_stopped_during_a_tick_scans_nothing(fleet):
    """The tick read the schedule active; a person stops it before the tick claims it."""
    read_by_the_tick = schedule_of(create(fleet))
    r = fleet["tech"].post(
        f"/api/v1/patch-scan-schedules/{read_by_the_tick.pk}/stop/", {"reason": "agreement ended"}, format="json"
    )
    assert r.status_code == 200
    assert schedules.dispatch(read_by_the_tick, read_by_the_tick.dispatched_until + timedelta(hours=2)) == 0
    assert scans_created() == 0
    assert not HistoryEvent.objects.filter(action="patch_scan_schedule.dispatched").exists()


def test_a_schedule_stopped_meanwhile_does_not_end_the_tick(fleet):
    """The tick finds the schedule's authority gone, but a person stopped it first: the tick goes on
    (no 409 for the system), and the person's reason stands."""
    read_by_the_tick = schedule_of(create(fleet))
    fleet["tech"].post(f"/api/v1/patch-scan-schedules/{read_by_the_tick.pk}/stop/", {"reason": "mine"}, format="json")
    task = fleet["task"]
    authority.upsert_task(fleet["psa"].user, task.pk, case_id=task.case_id, title=task.title, status="closed")
    assert schedules.dispatch(read_by_the_tick, read_by_the_tick.dispatched_until + timedelta(hours=2)) == 0
    shown = fleet["tech"].get(f"/api/v1/patch-scan-schedules/{read_by_the_tick.pk}/").json()
    assert shown["status"] == "stopped" and shown["status_reason"] == "mine"
    assert HistoryEvent.objects.filter(action="patch_scan_schedule.stopped").count() == 1


def test_the_database_holds_one_active_schedule_per_site(fleet):
    """Two requests at once both pass the service's check; the partial unique constraint lets one
    in (the service answers the other 409, as for a sequential second request)."""
    first = schedule_of(create(fleet))
    now = timezone.now()
    with pytest.raises(IntegrityError), transaction.atomic():
        PatchScanSchedule.objects.create(
            site=first.site,
            psa_task=first.psa_task,
            interval_seconds=HOUR,
            created_by=first.created_by,
            created_at=now,
            dispatched_until=now,
        )
    url = f"/api/v1/patch-scan-schedules/{first.pk}/stop/"
    assert fleet["tech"].post(url, {"reason": "replaced"}, format="json").status_code == 200
    assert create(fleet).status_code == 201  # a stopped one does not count
    assert PatchScanSchedule.objects.filter(site=first.site).count() == 2
    assert HistoryEvent.objects.filter(action="patch_scan_schedule.created").count() == 2


def test_an_asset_a_patch_job_is_installing_on_is_skipped_and_the_tick_says_so(fleet):
    scan(fleet, dpkg_document(ZZ, UPGRADES))  # the asset misses a patch
    made = request(fleet).json()
    assert approve(fleet, made["id"]).json()["status"] == "running"  # its install is queued
    asset_id = fleet["agent"].asset_id
    schedule = schedule_of(create(fleet))
    before = set(PatchScanJob.objects.values_list("pk", flat=True))
    schedules.dispatch_all(now=schedule.dispatched_until + timedelta(hours=2))
    scanned = set(PatchScanJob.objects.exclude(pk__in=before).values_list("asset_id", flat=True))
    assert len(scanned) == 8 and asset_id not in scanned  # not racing the package manager
    event = HistoryEvent.objects.get(action="patch_scan_schedule.dispatched")
    assert event.payload["busy"] == 1
    assert event.payload["skipped"] == {str(asset_id): "a patch job is installing on it; its re-scan follows"}
    run(fleet, None)  # the install, then its re-scan: the job has ended
    run(fleet, dpkg_document({**ZZ, "zz-rmm-tool": "1.0-2"}, UPGRADES, [("zz-rmm-tool", "1.0-2")]))
    assert PatchInstallJob.objects.get().status == "succeeded"
    schedules.dispatch_all(now=schedule.dispatched_until + timedelta(hours=3))
    assert PatchScanJob.objects.exclude(pk__in=before).filter(asset_id=asset_id).count() == 1  # its next moment
