"""Known limits of issue 11 closed: an open console leaves a revoked site's live events at once, and
superuser changes to roles, grants, permissions and schedules are in the execution history."""

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.test import Client
from django_q.models import Schedule
from guardian.shortcuts import assign_perm, remove_perm

from rmm.access import services as access_services
from rmm.access.roles import ensure_role_groups
from rmm.engine.events import site_group
from rmm.history.models import HistoryEvent
from rmm.inventory import services as inventory
from tests.helpers import otp_login

# --- the console websocket ---------------------------------------------------------------------


def _console(client):
    from channels.testing import WebsocketCommunicator

    from rmm.asgi import application

    return WebsocketCommunicator(
        application,
        "/ws/console/",
        headers=[
            (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()),
            (b"origin", b"http://127.0.0.1"),
            (b"host", b"127.0.0.1"),
        ],
    )


async def _event_reaches(comm, site, mark: str) -> bool:
    """Send a live event to the site's group; did this console get it? (receive_nothing, not a
    timed-out receive: that would end the consumer.)"""
    await get_channel_layer().group_send(site_group(site.pk), {"type": "rmm.event", "event": {"mark": mark}})
    if await comm.receive_nothing(timeout=1):
        return False
    return (await comm.receive_json_from(timeout=1))["mark"] == mark


@pytest.mark.parametrize("how", ["service", "guardian"])
def test_an_open_console_leaves_a_revoked_sites_group_at_once(db, monkeypatch, django_capture_on_commit_callbacks, how):
    import channels.db

    # The consumer's database calls run on this thread, inside the test's transaction: keep it open.
    monkeypatch.setattr(channels.db, "close_old_connections", lambda: None)
    alpha, beta = inventory.get_or_create_site("alpha"), inventory.get_or_create_site("beta")
    tech = access_services.ensure_user_with_role("tech", "technician")
    access_services.grant_site(tech, alpha)
    access_services.grant_site(tech, beta)
    client = Client()
    client.force_login(tech)

    def revoke_beta():
        with django_capture_on_commit_callbacks(execute=True):
            if how == "service":
                access_services.revoke_site(tech, beta, actor="cli:rmm_grant")
            else:  # behind the services' back, as in `manage.py shell`
                remove_perm("inventory.access_site", tech, beta)

    async def scenario():
        comm = _console(client)
        connected, _ = await comm.connect()
        assert connected
        assert await _event_reaches(comm, beta, "before")
        await sync_to_async(revoke_beta)()
        assert await comm.receive_json_from(timeout=5) == {"type": "access_changed"}
        reached_beta = await _event_reaches(comm, beta, "after")
        reached_alpha = await _event_reaches(comm, alpha, "alpha")
        await comm.disconnect()
        return reached_beta, reached_alpha

    assert async_to_sync(scenario)() == (False, True)


def test_a_deactivated_user_is_disconnected(db, monkeypatch, django_capture_on_commit_callbacks):
    import channels.db

    monkeypatch.setattr(channels.db, "close_old_connections", lambda: None)
    alpha = inventory.get_or_create_site("alpha")
    tech = access_services.ensure_user_with_role("tech", "technician")
    access_services.grant_site(tech, alpha)
    client = Client()
    client.force_login(tech)

    def deactivate():
        with django_capture_on_commit_callbacks(execute=True):
            tech.is_active = False
            tech.save()

    async def scenario():
        comm = _console(client)
        assert (await comm.connect())[0]
        await sync_to_async(deactivate)()
        return await comm.receive_output(timeout=5)

    assert async_to_sync(scenario)() == {"type": "websocket.close", "code": 4403}


# --- superuser changes in the history ----------------------------------------------------------


@pytest.fixture
def root(db):
    ensure_role_groups()
    user = get_user_model().objects.create_superuser("root", password="a-long-password-1")
    return otp_login(Client(), user)


def events_of(actor: str) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for action, payload in (
        HistoryEvent.objects.filter(actor=actor).order_by("sequence").values_list("action", "payload")
    ):
        found.setdefault(action, []).append(payload)
    return found


def test_a_superusers_changes_in_the_user_and_group_admin_are_recorded(root, site):
    bob = get_user_model().objects.create_user("bob", password="a-long-password-2")
    privileged = Permission.objects.get(codename="approve_privileged")
    every_site = Permission.objects.get(codename="access_site")
    approver = Group.objects.get(name="approver")
    response = root.post(
        f"/admin/auth/user/{bob.pk}/change/",
        {
            "username": "bob",
            "is_active": "on",
            "is_staff": "on",
            "groups": [approver.pk],
            "user_permissions": [privileged.pk, every_site.pk],
            "date_joined_0": "2026-01-01",
            "date_joined_1": "00:00:00",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    response = root.post("/admin/auth/group/add/", {"name": "auditors", "permissions": [privileged.pk]})
    assert response.status_code == 302
    seen = events_of("user:root")
    assert seen["user.groups_added"] == [{"username": "bob", "groups": ["approver"]}]
    assert seen["user.permissions_added"] == [
        {"username": "bob", "permissions": ["inventory.access_site", "scripting.approve_privileged"]}
    ]
    flags = seen["user.flags_changed"][0]
    assert flags["before"]["is_staff"] is False and flags["after"]["is_staff"] is True
    assert seen["group.saved"][0]["group"] == "auditors"
    assert seen["group.permissions_added"] == [{"group": "auditors", "permissions": ["scripting.approve_privileged"]}]
    # taking the role away is recorded too
    approver.user_set.remove(bob)
    assert events_of("system")["user.groups_removed"] == [{"username": "bob", "groups": ["approver"]}]


def test_a_site_grant_made_behind_the_services_is_recorded(db, site):
    carol = get_user_model().objects.create_user("carol")
    assign_perm("inventory.access_site", carol, site)
    remove_perm("inventory.access_site", carol, site)
    added = HistoryEvent.objects.get(action="access.object_permission_added")
    removed = HistoryEvent.objects.get(action="access.object_permission_removed")
    assert added.site_id == site.pk and removed.site_id == site.pk
    assert added.payload["user"] == "carol" and added.payload["permission"] == "inventory.access_site"
    # the services record their own changes, once
    access_services.grant_site(carol, site, actor="cli:rmm_grant")
    assert HistoryEvent.objects.filter(action__startswith="access.object_permission").count() == 2
    assert HistoryEvent.objects.filter(action="access.site_granted").count() == 1


def test_schedule_changes_are_recorded_but_not_the_clusters_bookkeeping(db):
    from django.utils import timezone

    schedule = Schedule.objects.create(name="nightly", func="rmm.core.on_commit.noop", schedule_type="D", repeats=-1)
    schedule.next_run = timezone.now()  # what django-q2 writes after each run
    schedule.save()
    schedule.minutes, schedule.schedule_type = 5, "I"
    schedule.save()
    schedule.delete()
    actions = list(
        HistoryEvent.objects.filter(subject_type="django_q.schedule")
        .order_by("sequence")
        .values_list("action", flat=True)
    )
    assert actions == ["schedule.saved", "schedule.saved", "schedule.deleted"]
    changed = HistoryEvent.objects.filter(action="schedule.saved").order_by("sequence").last().payload
    assert changed["before"]["schedule_type"] == "D" and changed["after"]["schedule_type"] == "I"
