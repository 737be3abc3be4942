"""Maintenance windows (issue 16, part 4): a patch job approved and due while its site's window is
closed is held, says until when, and is released when the window opens, in its batch's rings. The
clock is the release's ``now``; a window's times are its time zone's wall clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone
from django_q.models import Schedule

from patching import jobs, windows
from patching.models import MaintenanceWindow, PatchInstallJob, PatchJob
from rmm.engine import services as engine
from rmm.engine.models import Batch, Instruction
from rmm.engine.services import batches, stopping
from rmm.history.models import HistoryEvent
from rmm.inventory.models import Agent
from tests.helpers import make_agent
from tests.patching.scanning import dpkg_document, run, scan
from tests.patching.test_patch_jobs import UPGRADES, ZZ, approve, request, state


@pytest.fixture
def scanned(world):
    scan(world, dpkg_document(ZZ, UPGRADES))
    return world


def window(world, who="tech", **extra):
    body = {"site": "alpha", "days": ["sat"], "start": "22:00", "duration_minutes": 240, "timezone": "Europe/Berlin"}
    return world[who].post("/api/v1/maintenance-windows/", {**body, **extra}, format="json")


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_a_window_is_the_sites_wall_clock_across_midnight_and_daylight_saving(world):
    r = window(world)
    assert r.status_code == 201, r.content
    assert r.json() | {"id": None, "created_at": None} == {
        "id": None,
        "site": "alpha",
        "days": ["sat"],
        "start": "22:00",
        "duration_minutes": 240,
        "timezone": "Europe/Berlin",
        "created_by": "tech",
        "created_at": None,
    }
    site = world["site"].pk
    # Wednesday 9 December 2026: the next Saturday 22:00 in Berlin (UTC+1) is 21:00 UTC
    assert windows.next_release(site, utc(2026, 12, 9, 10)) == utc(2026, 12, 12, 21)
    assert windows.next_release(site, utc(2026, 12, 12, 22, 30)) == utc(2026, 12, 12, 22, 30)  # open
    assert windows.next_release(site, utc(2026, 12, 13, 0, 59)) == utc(2026, 12, 13, 0, 59)  # Sunday 01:59
    assert windows.next_release(site, utc(2026, 12, 13, 1)) == utc(2026, 12, 19, 21)  # closed at 02:00
    # in June Berlin is UTC+2: still 22:00 on its clock
    assert windows.next_release(site, utc(2027, 6, 9, 10)) == utc(2027, 6, 12, 20)


def test_a_due_job_outside_the_window_is_held_then_released_when_it_opens(scanned, django_capture_on_commit_callbacks):
    opens = (timezone.now() + timedelta(hours=2)).replace(second=0, microsecond=0)
    r = window(
        scanned,
        days=[windows.DAYS[opens.weekday()]],
        start=opens.strftime("%H:%M"),
        duration_minutes=60,
        timezone="UTC",
    )
    assert r.status_code == 201, r.content
    made = request(scanned, plan={"canary": 1, "failure_threshold_percent": 0}).json()
    with django_capture_on_commit_callbacks(execute=True):
        r = approve(scanned, made["id"])
    assert r.status_code == 200, r.content
    shown = r.json()
    assert shown["status"] == "scheduled"
    assert shown["held_until"] == opens.isoformat().replace("+00:00", "Z")
    assert shown["status_reason"] == f"held until the maintenance window opens at {opens.isoformat()}"
    [schedule] = Schedule.objects.filter(func="patching.tasks.release_patch_job")
    assert schedule.next_run == opens
    assert HistoryEvent.objects.filter(action="patch_job.held").count() == 1
    assert PatchInstallJob.objects.get().status == "awaiting_approval" and state(scanned, "zz-rmm-tool") == "missing"

    assert jobs.release_due(made["id"], now=opens - timedelta(minutes=1)) == 0  # still closed
    assert PatchJob.objects.get(pk=made["id"]).status == "scheduled"
    assert jobs.release_due(made["id"], now=opens + timedelta(seconds=1)) == 1
    shown = scanned["psa"].get(f"/api/v1/patch-jobs/{made['id']}/").json()
    assert shown["status"] == "running" and shown["held_until"] is None and shown["status_reason"] == ""
    assert PatchInstallJob.objects.get().status == "queued" and state(scanned, "zz-rmm-tool") == "installing"


def test_a_job_whose_window_is_open_is_released_at_once(scanned):
    now = timezone.now()
    start = (now - timedelta(minutes=30)).replace(second=0, microsecond=0)
    window(scanned, days=[windows.DAYS[start.weekday()]], start=start.strftime("%H:%M"), timezone="UTC")
    made = request(scanned).json()
    assert approve(scanned, made["id"]).json()["status"] == "running"
    assert not HistoryEvent.objects.filter(action="patch_job.held").exists()


@pytest.mark.parametrize(
    "change, field",
    [
        ({"days": ["funday"]}, "days"),
        ({"days": []}, "days"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"duration_minutes": 5}, "duration_minutes"),
        ({"start": "25:00"}, "start"),
        ({"site": "nowhere"}, "site"),
    ],
    ids=["unknown_day", "no_day", "timezone", "too_short", "start", "site"],
)
def test_bad_windows_are_refused_naming_the_field(world, change, field):
    r = window(world, **change)
    assert r.status_code == 400 and field in r.json(), r.content
    assert not MaintenanceWindow.objects.exists()


def test_who_may_set_and_see_a_sites_windows(world, caller, other_site):
    assert window(world, who="psa").status_code == 201
    auditor = caller("audit", "compliance")
    assert window({**world, "audit": auditor}, who="audit").status_code == 403
    made = MaintenanceWindow.objects.get()
    outsider = caller("outsider", "technician", sites=[other_site])
    assert outsider.get(f"/api/v1/maintenance-windows/{made.pk}/").status_code == 404
    assert outsider.delete(f"/api/v1/maintenance-windows/{made.pk}/").status_code == 404
    assert outsider.get("/api/v1/maintenance-windows/").json()["count"] == 0
    assert world["tech"].delete(f"/api/v1/maintenance-windows/{made.pk}/").status_code == 204
    assert not MaintenanceWindow.objects.exists()
    assert HistoryEvent.objects.filter(action="maintenance_window.deleted").count() == 1


def open_window(world) -> tuple[MaintenanceWindow, datetime]:
    """A window of the site, on the UTC clock, that opened 30 minutes ago; and when it closes."""
    start = (timezone.now() - timedelta(minutes=30)).replace(second=0, microsecond=0)
    r = window(
        world, days=[windows.DAYS[start.weekday()]], start=start.strftime("%H:%M"), duration_minutes=60, timezone="UTC"
    )
    assert r.status_code == 201, r.content
    return MaintenanceWindow.objects.get(pk=r.json()["id"]), start + timedelta(minutes=60)


def close(made: MaintenanceWindow, *, opens_in_hours: int = 2) -> datetime:
    """The window closes (moved to later today): returns when it opens again."""
    opens = (timezone.now() + timedelta(hours=opens_in_hours)).replace(second=0, microsecond=0)
    MaintenanceWindow.objects.filter(pk=made.pk).update(days=[opens.weekday()], start=opens.time())
    return opens


def test_a_ring_due_after_the_window_closed_waits_for_the_next_window(
    world, settings, django_capture_on_commit_callbacks
):
    settings.RMM_TASKS_SYNC = True  # a released ring's instructions are issued on commit
    second, _ = make_agent(world["site"], "patch-2")
    Agent.objects.filter(pk=second.pk).update(capabilities="structured_result,reboot", protocol=2)
    for agent in (world["agent"], second):
        scan(world, dpkg_document(ZZ, UPGRADES), agent=agent)
    made_window, _ = open_window(world)
    plan = {"canary": 1, "ring_size": 1, "interval_seconds": 0, "failure_threshold_percent": 0}
    made = request(world, assets=[str(world["agent"].asset_id), str(second.asset_id)], plan=plan).json()
    with django_capture_on_commit_callbacks(execute=True):
        assert approve(world, made["id"]).json()["status"] == "running"
    canary = PatchInstallJob.objects.select_related("asset").get(ring=0)
    first = world["agent"] if canary.asset_id == world["agent"].asset_id else second
    later = second if first is world["agent"] else world["agent"]
    run(world, None, agent=first)  # the install, inside the window
    opens = close(made_window)
    wanted = [("zz-rmm-tool", "1.0-2")]
    with django_capture_on_commit_callbacks(execute=True):
        run(world, dpkg_document({**ZZ, "zz-rmm-tool": "1.0-2"}, UPGRADES, wanted), agent=first)
    # the canary succeeded, but the window has closed: the next ring is not released
    batch = Batch.objects.get(pk=made["batch"])
    assert batch.released_rings == 1 and batch.held_until == opens
    assert engine.lease(later, 4, timezone.now()) == []
    [held] = HistoryEvent.objects.filter(action="batch.held", subject_id=made["batch"])
    assert held.payload == {"ring": 1, "until": opens.isoformat()}
    shown = world["psa"].get(f"/api/v1/batches/{made['batch']}/").json()
    assert shown["status"] == "running" and shown["held_until"] == opens.isoformat().replace("+00:00", "Z")
    batches.sweep(opens - timedelta(minutes=1))  # still closed: said once, not every minute
    assert HistoryEvent.objects.filter(action="batch.held").count() == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert batches.sweep(opens + timedelta(seconds=1)) == 1  # the window opened
    batch.refresh_from_db()
    assert batch.released_rings == 2 and batch.held_until is None
    [install] = Instruction.objects.filter(agent=later, job_kind="patch")
    # signed now, but leased only inside the window: from its opening until it closes
    assert install.release_at == opens and install.not_after == opens + timedelta(minutes=60)


def test_a_job_not_started_when_the_window_closes_does_not_start_outside_it(world):
    scan(world, dpkg_document(ZZ, UPGRADES))
    _, closes = open_window(world)
    made = request(world).json()
    assert approve(world, made["id"]).json()["status"] == "running"
    [install] = Instruction.objects.filter(job_id=made["jobs"][0]["id"])
    assert install.not_after == closes  # not a day later, as its lifetime alone would allow
    assert engine.lease(world["agent"], 4, closes + timedelta(seconds=1)) == []  # the agent came too late
    stopping.sweep(closes + timedelta(seconds=1))
    install.refresh_from_db()
    assert install.status == "lost" and PatchInstallJob.objects.get().status == "lost"
    assert state(world, "zz-rmm-tool") == "installing"  # until the next scan reads it anew
