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
from rmm.history.models import HistoryEvent
from tests.patching.scanning import dpkg_document, scan
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
