"""An admin changes a person through the access services: roles and sites, a new password,
deactivation and reactivation, a second factor reset. Every change and every refusal is in the
history; a deactivated person's token answers 401 and their password no longer signs in."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.contrib.auth import get_user_model
from django.test import Client
from django_otp.plugins.otp_totp.models import TOTPDevice

from rmm.access import roles
from rmm.access import services as access_services
from rmm.core.errors import Conflict, Forbidden, InvalidInput
from rmm.history.models import HistoryEvent
from rmm.signin import services as signin
from tests.access.test_access_changes import _console
from tests.helpers import otp_login

PASSWORD = "a long enough passphrase 7"


def events(action: str, **filters) -> list[dict]:
    return list(
        HistoryEvent.objects.filter(action=action, **filters).order_by("sequence").values_list("payload", flat=True)
    )


def person(username: str, role: str, *sites, password: str = PASSWORD):
    user = access_services.ensure_user_with_role(username, role)
    for site in sites:
        access_services.grant_site(user, site)  # None: every site
    user.set_password(password)
    user.save()
    return user


def fresh(user):
    return get_user_model().objects.get(pk=user.pk)


def signs_in(username: str, password: str = PASSWORD) -> bool:
    """Through the console's sign-in form: a redirect is a sign-in, the form again is not."""
    return Client().post("/accounts/login/", {"username": username, "password": password}).status_code == 302


@pytest.fixture
def boss(db):
    return person("boss", "admin", None)


def test_roles_and_sites_are_set_to_what_the_admin_chose_and_each_change_is_recorded(boss, site, other_site):
    tess = person("tess", "technician", site)
    changes = access_services.change_access(boss, tess, roles={"approver"}, every_site=False, sites={other_site})
    assert changes == ["role approver given", "role technician taken", "site alpha taken", "site beta granted"]
    tess = fresh(tess)
    assert roles.roles_of(tess) == {"approver"} and tess.is_staff
    assert [s.name for s in roles.visible_sites(tess)] == ["beta"]
    assert events("user.role_granted", actor="user:boss")[-1] == {"username": "tess", "role": "approver"}
    assert events("user.role_revoked", actor="user:boss") == [{"username": "tess", "role": "technician"}]
    assert events("access.site_revoked", actor="user:boss") == [{"username": "tess", "site": "alpha"}]
    assert events("access.site_granted", actor="user:boss") == [{"username": "tess", "site": "beta"}]
    # The every-site grant, and back; the same choice again changes nothing.
    assert access_services.change_access(boss, tess, roles={"approver"}, every_site=True, sites=set()) == [
        "every site granted",
        "site beta taken",
    ]
    assert roles.sees_all_sites(fresh(tess))
    assert access_services.change_access(boss, tess, roles={"approver"}, every_site=True, sites=set()) == []


def test_the_admin_role_of_the_last_active_admin_stays(boss, site):
    with pytest.raises(Conflict, match="boss is the last active admin"):
        access_services.change_access(boss, boss, roles={"technician"}, every_site=True, sites=set())
    assert roles.roles_of(fresh(boss)) == {"admin"}
    assert events("refused.user.change_access")[-1]["reason"] == "the last active admin"
    assert not events("user.role_granted", payload__role="technician")
    # With a second admin it may go.
    person("ada", "admin", None)
    access_services.change_access(boss, boss, roles={"technician"}, every_site=True, sites=set())
    assert roles.roles_of(fresh(boss)) == {"technician"}


def test_an_admin_of_some_sites_changes_only_people_of_its_sites_and_grants_only_them(db, site, other_site):
    local = person("local", "admin", site)
    near = person("near", "technician", site)
    far = person("far", "technician", other_site)
    wide = person("wide", "technician", None)
    for who in (far, wide):
        with pytest.raises(Forbidden, match="holds sites you do not"):
            access_services.change_access(local, who, roles={"admin"}, every_site=False, sites={site})
        with pytest.raises(Forbidden):
            access_services.deactivate_person(local, who, "gone")
        with pytest.raises(Forbidden):
            access_services.set_password(local, who, "another long passphrase 8")
    assert len(events("refused.user.change_access")) == 2
    assert len(events("refused.user.deactivate")) == 2
    assert len(events("refused.user.set_password")) == 2
    with pytest.raises(Forbidden, match="Only an admin of every site may grant every site"):
        access_services.change_access(local, near, roles={"technician"}, every_site=True, sites=set())
    with pytest.raises(InvalidInput, match="beta is not one") as refused:
        access_services.change_access(local, near, roles={"technician"}, every_site=False, sites={site, other_site})
    assert refused.value.field == "sites"
    assert [e["reason"] for e in events("refused.user.change_access")[2:]] == [
        "every site granted by an admin of some sites",
        "site not visible to the admin",
    ]
    assert [s.name for s in roles.visible_sites(fresh(near))] == ["alpha"]
    with pytest.raises(InvalidInput, match="Unknown role wizard"):
        access_services.change_access(local, near, roles={"wizard"}, every_site=False, sites={site})
    # Within its sites, it may.
    assert access_services.change_access(local, near, roles={"compliance"}, every_site=False, sites={site}) == [
        "role compliance given",
        "role technician taken",
    ]


def test_only_an_admin_changes_people_and_only_a_superuser_changes_a_superuser(boss, site):
    tech = person("tech", "technician", None)
    root = get_user_model().objects.create_superuser("root", password=PASSWORD)
    with pytest.raises(Forbidden, match="Only an admin may manage people"):
        access_services.deactivate_person(tech, boss, "coup")
    with pytest.raises(Forbidden, match="root is a superuser"):
        access_services.deactivate_person(boss, root, "coup")
    assert [e["reason"] for e in events("refused.user.deactivate")] == [
        "Only an admin may manage people.",
        "root is a superuser: only a superuser may change them.",
    ]
    assert fresh(boss).is_active and fresh(root).is_active


def test_a_new_password_replaces_the_old_one_and_is_never_recorded(boss, site):
    tess = person("tess", "technician", site)
    with pytest.raises(InvalidInput, match="too short") as refused:
        access_services.set_password(boss, tess, "short")
    assert refused.value.field == "password"
    access_services.set_password(boss, tess, "another long passphrase 8")
    assert not signs_in("tess") and signs_in("tess", "another long passphrase 8")
    [event] = HistoryEvent.objects.filter(action="user.password_set")
    assert event.actor == "user:boss" and event.payload == {"username": "tess"}
    assert "passphrase" not in str(HistoryEvent.objects.values_list("payload", flat=True))


def test_a_new_password_ends_the_persons_sessions(boss, site):
    tess = person("tess", "technician", site)
    session = Client()
    session.force_login(tess)
    assert session.get("/console/").status_code == 200
    access_services.set_password(boss, tess, "another long passphrase 8")
    assert session.get("/console/")["Location"].startswith("/accounts/login/")


def test_a_deactivated_person_cannot_sign_in_and_their_token_and_session_stop(boss, caller, site):
    tess = caller("tess", "technician", [site])
    tess.user.set_password(PASSWORD)
    tess.user.save()
    assert tess.get("/api/v1/sites/").status_code == 200
    session = Client()
    session.force_login(tess.user)
    assert session.get("/console/").status_code == 200

    assert access_services.deactivate_person(boss, tess.user, "left the company") == 1
    response = tess.get("/api/v1/sites/")
    assert response.status_code == 401 and "revoked" in response.json()["detail"]
    assert not signs_in("tess")
    assert session.get("/console/")["Location"].startswith("/accounts/login/")
    assert events("user.deactivated", actor="user:boss") == [
        {"username": "tess", "reason": "left the company", "tokens_revoked": 1}
    ]
    assert events("api_token.revoked")[-1]["reason"] == "person deactivated"
    # Their history stays, and so do they (their jobs and approvals point at them).
    assert HistoryEvent.objects.filter(subject_id=str(tess.user.pk)).count() > 1
    with pytest.raises(Conflict, match="Deactivated already"):
        access_services.deactivate_person(boss, tess.user, "again")
    assert events("refused.user.deactivate")[-1]["reason"] == "deactivated already"

    access_services.reactivate_person(boss, fresh(tess.user))
    assert signs_in("tess")
    assert tess.get("/api/v1/sites/").status_code == 401  # the token stays revoked
    assert events("user.reactivated", actor="user:boss") == [{"username": "tess"}]
    with pytest.raises(Conflict, match="Active already"):
        access_services.reactivate_person(boss, fresh(tess.user))


def test_nobody_deactivates_themselves_nor_the_last_active_admin(boss, site):
    with pytest.raises(Conflict, match="You cannot deactivate yourself"):
        access_services.deactivate_person(boss, boss, "tired")
    assert events("refused.user.deactivate", actor="user:boss")[-1]["reason"] == "own account"
    with pytest.raises(InvalidInput) as refused:
        access_services.deactivate_person(boss, person("tess", "technician", site), " ")
    assert refused.value.field == "reason"
    # Two admins deactivating each other at once: the second finds itself deactivated already by
    # the first (its own object still says active), and the last admin stays.
    ada = person("ada", "admin", None)
    stale_ada = get_user_model().objects.get(pk=ada.pk)
    access_services.deactivate_person(boss, ada, "handover")
    with pytest.raises(Conflict, match="boss is the last active admin"):
        access_services.deactivate_person(stale_ada, boss, "handover")
    assert fresh(boss).is_active
    assert events("refused.user.deactivate", actor="user:ada")[-1]["reason"] == "the last active admin"


def test_an_admin_resets_a_lost_second_factor_as_rmm_otp_reset_does(boss, site):
    arno = person("arno", "approver", site)
    session = otp_login(Client(), arno)
    assert session.get("/console/").status_code == 200
    assert signin.reset_second_factor(boss, arno) == 1
    assert not TOTPDevice.objects.filter(user=arno).exists()
    assert session.get("/console/")["Location"].startswith("/accounts/otp/setup/")
    assert events("signin.otp_device_removed", actor="user:boss") == [{"user": "arno"}]
    with pytest.raises(Conflict, match="arno has no second factor set up"):
        signin.reset_second_factor(boss, arno)
    tech = person("tech", "technician", None)
    otp_login(Client(), boss)
    with pytest.raises(Forbidden):
        signin.reset_second_factor(tech, boss)
    assert TOTPDevice.objects.filter(user=boss).exists()
    assert events("refused.signin.otp_reset", actor="user:tech")[-1]["reason"] == "Only an admin may manage people."


def test_the_persons_open_console_is_told_of_a_role_change_and_closed_when_deactivated(
    boss, site, other_site, monkeypatch, django_capture_on_commit_callbacks
):
    import channels.db

    # The consumer's database calls run on this thread, inside the test's transaction: keep it open.
    monkeypatch.setattr(channels.db, "close_old_connections", lambda: None)
    tess = person("tess", "technician", site)
    client = Client()
    client.force_login(tess)

    def change(call):
        with django_capture_on_commit_callbacks(execute=True):
            call()

    async def scenario():
        comm = _console(client)
        assert (await comm.connect())[0]
        await sync_to_async(change)(
            lambda: access_services.change_access(boss, tess, roles={"compliance"}, every_site=False, sites={site})
        )
        told = await comm.receive_json_from(timeout=5)
        while not await comm.receive_nothing(timeout=0.5):  # one message per role and grant changed
            await comm.receive_json_from(timeout=1)
        await sync_to_async(change)(lambda: access_services.deactivate_person(boss, tess, "left"))
        closed = await comm.receive_output(timeout=5)
        return told, closed

    told, closed = async_to_sync(scenario)()
    assert told == {"type": "access_changed"}
    assert closed == {"type": "websocket.close", "code": 4403}
