"""The admin's SIEM destinations (superusers, read-only): each with its position, state and last
error, never its token or CA; nobody adds, changes or deletes one there (the API's services do)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from rmm.access import services as access_services
from rmm.siem import services as siem
from rmm.siem.models import Destination
from tests.helpers import otp_login

LIST = "/admin/siem/destination/"


@pytest.fixture
def destination(caller, site, settings):
    settings.RMM_WEBHOOK_ALLOW_PRIVATE = True
    root = caller("root", "admin").user
    return siem.create_destination(
        root, kind="http", shape="splunk_hec", address="http://127.0.0.1:9", token="hec-secret-token", name="splunk"
    )


def test_superusers_read_destinations_without_their_token(destination):
    operator = otp_login(Client(), get_user_model().objects.create_superuser("operator", "o@example.com", "x"))
    listed = operator.get(LIST).content.decode()
    assert f"{LIST}{destination.pk}/change/" in listed and "splunk" in listed
    page = operator.get(f"{LIST}{destination.pk}/change/").content.decode()
    assert "http://127.0.0.1:9" in page and "hec-secret-token" not in page and 'name="_save"' not in page
    assert operator.post(f"{LIST}{destination.pk}/delete/", {"post": "yes"}).status_code == 403
    assert operator.get(f"{LIST}add/").status_code == 403
    assert Destination.objects.filter(pk=destination.pk).exists()


def test_an_admin_who_is_no_superuser_does_not_see_them(destination, site):
    user = access_services.ensure_user_with_role("boss", "admin")
    access_services.grant_site(user, None)
    admin = otp_login(Client(), user)
    assert admin.get(LIST).status_code == 403
