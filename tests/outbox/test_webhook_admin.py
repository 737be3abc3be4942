"""The admin's webhook pages (superusers): a webhook made there shows its secret once, in the
message after saving, and never on any page after; its refusals are the form's; rotation shows the
new secret once; pinging sends a test event."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from rmm.history.models import HistoryEvent
from rmm.outbox.models import Delivery, Endpoint
from tests.helpers import otp_login
from tests.outbox.receivers import Receiver

ADD = "/admin/outbox/endpoint/add/"
LIST = "/admin/outbox/endpoint/"
SECRET = re.compile(r"whsec_[A-Za-z0-9+/=]+")


@pytest.fixture
def operator(db, site):
    user = get_user_model().objects.create_superuser("operator", "operator@example.com", "not-used-here")
    return otp_login(Client(), user)


@pytest.fixture
def receiver():
    made = Receiver()
    yield made
    made.close()


def test_a_webhook_made_in_the_admin_shows_its_secret_once(operator, site, receiver):
    answer = operator.post(
        ADD, {"url": receiver.url, "event_types": "kill_switch.engaged, job.finished", "sites": [site.pk]}, follow=True
    )
    assert answer.status_code == 200
    [shown] = SECRET.findall(answer.content.decode())
    endpoint = Endpoint.objects.get()
    assert shown == endpoint.secret and endpoint.event_types == ["kill_switch.engaged", "job.finished"]
    assert list(endpoint.sites.all()) == [site]
    assert HistoryEvent.objects.filter(action="webhook.created", actor="user:operator").count() == 1
    for page in (LIST, f"{LIST}{endpoint.pk}/change/"):
        text = operator.get(page).content.decode()
        assert endpoint.name in text and not SECRET.search(text)

    rotated = operator.post(LIST, {"action": "rotate_secret", "_selected_action": [endpoint.pk]}, follow=True)
    endpoint.refresh_from_db()
    assert SECRET.findall(rotated.content.decode()) == [endpoint.secret]
    assert endpoint.previous_secret == shown and not SECRET.search(operator.get(LIST).content.decode())

    operator.post(LIST, {"action": "ping", "_selected_action": [endpoint.pk]})
    assert Delivery.objects.get().event.type == "webhook.ping"


def test_a_refusal_is_the_form_s_and_nothing_is_made(operator, site):
    answer = operator.post(ADD, {"url": "http://169.254.169.254/", "event_types": "job.finished"})
    assert answer.status_code == 200 and "cloud metadata address" in answer.content.decode()
    answer = operator.post(ADD, {"url": "http://127.0.0.1:9/", "event_types": "job.exploded"})
    assert "Not a registered event type" in answer.content.decode()
    assert not Endpoint.objects.exists()
