"""A person's page, from the People page: an admin changes roles and sites, sets a password, resets
a second factor, deactivates (confirmed) and reactivates, with a plain message after each and the
field and reason beside bad input (400, 409); anyone else gets 403."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django_otp.plugins.otp_totp.models import TOTPDevice

from rmm.access import roles
from rmm.access import services as access_services
from rmm.history.models import HistoryEvent
from tests.access.test_people import PASSWORD, signs_in
from tests.helpers import otp_login

pytestmark = pytest.mark.django_db


@pytest.fixture
def boss(site):
    user = access_services.ensure_user_with_role("boss", "admin")
    access_services.grant_site(user, None)
    return user


@pytest.fixture
def admin(boss):
    return otp_login(Client(), boss)


@pytest.fixture
def tess(site):
    user = access_services.ensure_user_with_role("tess", "technician")
    access_services.grant_site(user, site)
    user.set_password(PASSWORD)
    user.save()
    return user


def url(user, action: str = "") -> str:
    return f"/console/people/{user.pk}/" + (f"{action}/" if action else "")


def shown(response) -> str:
    return response.content.decode()


def test_the_people_page_links_each_person_to_their_page(admin, tess):
    body = shown(admin.get("/console/people/"))
    assert f'href="{url(tess)}">tess</a>' in body
    body = shown(admin.get(url(tess)))
    assert re.search(r'data-field="roles">technician<.*data-field="sites">alpha<', body, re.S)
    for form in ("access-form", "password-form", "second-factor-form"):
        assert re.search(rf'id="{form}".*?name="csrfmiddlewaretoken"', body, re.S), form
    assert f'href="{url(tess, "deactivate")}"' in body
    assert admin.get("/console/people/999999/").status_code == 404


def test_an_admin_changes_roles_and_sites_and_sees_what_changed(admin, tess, other_site):
    response = admin.post(url(tess, "access"), {"roles": ["approver", "compliance"], "sites": ["beta"]}, follow=True)
    assert response.redirect_chain == [(url(tess), 302)]
    body = shown(response)
    assert (
        "tess: role approver given, role compliance given, role technician taken, site alpha taken, site beta granted."
        in body
    )
    assert re.search(r'data-field="roles">approver, compliance<.*data-field="sites">beta<', body, re.S)
    assert roles.roles_of(get_user_model().objects.get(username="tess")) == {"approver", "compliance"}
    response = admin.post(url(tess, "access"), {"roles": ["wizard"], "sites": ["nowhere"]})
    assert response.status_code == 400
    body = shown(response)
    assert "Nothing was changed: fix what is marked below." in body
    assert body.count("Select a valid choice") == 2
    assert roles.roles_of(get_user_model().objects.get(username="tess")) == {"approver", "compliance"}


def test_the_last_admins_own_role_is_refused_beside_the_form(admin, boss):
    response = admin.post(url(boss, "access"), {"roles": ["technician"], "sites": ["*"]})
    assert response.status_code == 409
    assert "boss is the last active admin: make someone else an admin first." in shown(response)
    assert HistoryEvent.objects.filter(action="refused.user.change_access").count() == 1


def test_an_admin_sets_a_password_and_bad_ones_are_named(admin, tess):
    response = admin.post(url(tess, "password"), {"password": "short"})
    assert response.status_code == 400
    assert re.search(r'id="id_password_error".*This password is too short', shown(response), re.S)
    response = admin.post(url(tess, "password"), {"password": "another long passphrase 8"}, follow=True)
    assert "tess has a new password; give it to them." in shown(response)
    assert signs_in("tess", "another long passphrase 8") and not signs_in("tess")


def test_an_admin_who_sets_their_own_password_stays_signed_in(admin, boss):
    response = admin.post(url(boss, "password"), {"password": "another long passphrase 8"}, follow=True)
    assert response.status_code == 200 and "boss has a new password" in shown(response)


def test_deactivation_is_confirmed_then_reactivation_is_one_button(admin, tess):
    page = shown(admin.get(url(tess, "deactivate")))
    assert "revokes their API tokens" in page and 'name="confirm"' in page
    response = admin.post(url(tess, "deactivate"), {"reason": "left"})
    assert response.status_code == 400 and "Tick the box to confirm." in shown(response)
    response = admin.post(url(tess, "deactivate"), {"confirm": "on"})
    assert response.status_code == 400 and "Say why: it is kept in their history." in shown(response)
    assert get_user_model().objects.get(username="tess").is_active
    response = admin.post(url(tess, "deactivate"), {"reason": "left", "confirm": "on"}, follow=True)
    body = shown(response)
    assert "tess is deactivated; 0 API token(s) revoked." in body
    assert 'data-field="active">no: deactivated' in body and 'id="reactivate-form"' in body
    assert not signs_in("tess")
    response = admin.post(url(tess, "deactivate"), {"reason": "again", "confirm": "on"})
    assert response.status_code == 409 and "Deactivated already." in shown(response)
    response = admin.post(url(tess, "reactivate"), follow=True)
    assert "tess may sign in again." in shown(response)
    assert signs_in("tess")
    response = admin.post(url(tess, "reactivate"))
    assert response.status_code == 409 and "Active already." in shown(response)


def test_an_admin_cannot_deactivate_themselves(admin, boss):
    response = admin.post(url(boss, "deactivate"), {"reason": "tired", "confirm": "on"})
    assert response.status_code == 409
    assert "You cannot deactivate yourself: ask another admin." in shown(response)
    assert get_user_model().objects.get(username="boss").is_active
    assert HistoryEvent.objects.get(action="refused.user.deactivate").payload["reason"] == "own account"


def test_an_admin_resets_a_second_factor(admin, site):
    arno = access_services.ensure_user_with_role("arno", "approver")
    otp_login(Client(), arno)
    response = admin.post(url(arno, "second-factor"), follow=True)
    assert "arno&#x27;s second factor is removed" in shown(response)
    assert not TOTPDevice.objects.filter(user=arno).exists()
    response = admin.post(url(arno, "second-factor"))
    assert response.status_code == 409 and "arno has no second factor set up." in shown(response)


def test_only_admins_of_the_persons_sites_may_change_them(tess, boss, other_site):
    technician = Client()
    technician.force_login(tess)
    for path, body in (
        (url(boss), None),
        (url(boss, "deactivate"), None),
        (url(boss, "access"), {"roles": ["technician"]}),
        (url(boss, "password"), {"password": "another long passphrase 8"}),
        (url(boss, "second-factor"), {}),
        (url(boss, "deactivate"), {"reason": "coup", "confirm": "on"}),
        (url(boss, "reactivate"), {}),
    ):
        response = technician.get(path) if body is None else technician.post(path, body)
        assert response.status_code == 403, path
    assert HistoryEvent.objects.filter(action="refused.user.view").count() == 7
    assert roles.roles_of(get_user_model().objects.get(username="boss")) == {"admin"}
    # An admin of beta sees tess (of alpha) but may not change her: no forms, and a POST is 403.
    beta_admin = access_services.ensure_user_with_role("beta-admin", "admin")
    access_services.grant_site(beta_admin, other_site)
    client = otp_login(Client(), beta_admin)
    body = shown(client.get(url(tess)))
    assert "tess holds sites you do not" in body and 'id="access-form"' not in body
    assert 'data-field="sites">1 you do not see<' in body
    assert client.post(url(tess, "deactivate"), {"reason": "x", "confirm": "on"}).status_code == 403
    assert HistoryEvent.objects.filter(action="refused.user.deactivate").count() == 1


def test_a_post_without_its_csrf_token_is_refused(boss, tess):
    client = otp_login(Client(enforce_csrf_checks=True), boss)
    response = client.post(url(tess, "deactivate"), {"reason": "left", "confirm": "on"})
    assert response.status_code == 403
    assert get_user_model().objects.get(username="tess").is_active
