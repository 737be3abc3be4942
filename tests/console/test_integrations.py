"""The console's integrations pages (issue 19, part 4): an admin makes a webhook and sees its secret
once, pings it, rotates its secret with an overlap, reads its deliveries with every attempt and
replays one, all against a real receiver on 127.0.0.1; SIEM destinations show their delivery state
and lag. Other roles get 403 (recorded) and an admin of other sites 404, and nothing changes."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client, RequestFactory

from rmm.access import services as access_services
from rmm.console import integrations, lists
from rmm.history.models import HistoryEvent
from rmm.history.services import append
from rmm.outbox import services as outbox
from rmm.outbox.models import Delivery, Endpoint
from rmm.siem import services as siem
from rmm.siem.models import Destination
from tests.helpers import otp_login
from tests.outbox.receivers import Receiver
from tests.outbox.test_webhooks import drain, verifies

pytestmark = pytest.mark.django_db


@pytest.fixture
def receiver():
    made = Receiver(fail_first=1)
    yield made
    made.close()


@pytest.fixture
def live(settings):
    settings.RMM_TASKS_SYNC = True
    settings.RMM_PSA_WEBHOOK_URL = ""
    settings.RMM_WEBHOOK_ALLOW_PRIVATE = True


def admin_of(name: str, site) -> Client:
    user = access_services.ensure_user_with_role(name, "admin")
    access_services.grant_site(user, site)
    return otp_login(Client(), user)


@pytest.fixture
def admin(site):
    return admin_of("boss", site)


def shown(response) -> str:
    return response.content.decode()


def secret_on(page: str) -> str:
    found = re.findall(r"<code>(whsec_[A-Za-z0-9+/=]+)</code>", page)
    assert len(found) == 1, found
    return found[0]


def test_an_admin_makes_pings_rotates_and_replays_a_webhook_on_the_console(
    admin, site, receiver, live, django_capture_on_commit_callbacks
):
    assert 'href="/console/webhooks/"' in shown(admin.get("/console/"))  # the navigation offers it
    response = admin.post(
        "/console/webhooks/", {"url": receiver.url, "event_types": ["webhook.ping"], "sites": ["alpha"], "name": "hook"}
    )
    assert response.status_code == 200, shown(response)
    page = shown(response)
    secret = secret_on(page)
    endpoint = Endpoint.objects.get(name="hook")
    assert endpoint.secret == secret and f'data-webhook="{endpoint.pk}"' in page
    detail = f"/console/webhooks/{endpoint.pk}/"
    page = shown(admin.get(detail))
    assert secret not in page and "whsec_" not in page  # shown once
    assert '<dd data-field="sites">alpha</dd>' in page and "No deliveries yet." in page

    with django_capture_on_commit_callbacks(execute=True):
        response = admin.post(detail + "ping/")
    assert response.status_code == 302 and response["Location"] == detail
    page = shown(admin.get(detail))
    delivery = Delivery.objects.get(endpoint=endpoint)
    assert f"Test event {delivery.event.message_id} queued for hook." in page
    # the receiver failed the first call: the page shows that attempt, and the retry to come
    assert re.search(r'data-attempt="1">[^<]*HTTP 503, \d+ ms, HTTP 503', page), page
    drain()
    page = shown(admin.get(detail))
    assert re.search(r'data-attempt="2">[^<]*HTTP 204', page) and ">delivered<" in page
    assert verifies(secret, receiver.accepted[0])

    response = admin.post(detail + "rotate-secret/", {"overlap_hours": "2"})
    assert response.status_code == 200
    page = shown(response)
    rotated = secret_on(page)
    assert rotated != secret and "The old one signs beside it until" in page
    assert "whsec_" not in shown(admin.get(detail))

    with django_capture_on_commit_callbacks(execute=True):
        response = admin.post(f"/console/webhook-deliveries/{delivery.pk}/replay/")
    assert response["Location"] == detail
    assert "is sent again, with the same id and body." in shown(admin.get(detail))
    replayed = receiver.accepted[-1]
    assert len(receiver.accepted) == 2 and replayed["raw"] == receiver.accepted[0]["raw"]
    assert replayed["headers"]["webhook-id"] == delivery.event.message_id
    assert verifies(secret, replayed) and verifies(rotated, replayed)  # both sign during the overlap
    assert re.search(r'data-attempt="3">[^<]*HTTP 204', shown(admin.get(detail)))


def test_bad_input_is_named_beside_its_field_and_makes_nothing(admin, live):
    response = admin.post("/console/webhooks/", {"url": "http://169.254.169.254/", "event_types": ["job.finished"]})
    assert response.status_code == 400
    page = shown(response)
    assert "Nothing was made: fix what is marked below." in page and "whsec_" not in page
    response = admin.post(
        "/console/webhooks/", {"url": "http://127.0.0.1:9/", "event_types": ["job.finished", "no.such"]}
    )
    assert response.status_code == 400 and "Select a valid choice. no.such is not one of" in shown(response)
    # an admin of one site may not make a webhook for every site: the 403 page, recorded
    response = admin.post("/console/webhooks/", {"url": "http://127.0.0.1:9/", "event_types": ["job.finished"]})
    assert response.status_code == 403
    assert HistoryEvent.objects.filter(action="refused.webhook.sites").count() == 1
    assert not Endpoint.objects.exists()


def test_a_rotation_with_a_bad_overlap_and_a_replay_while_pending_change_nothing(admin, site, live, caller):
    endpoint, secret = outbox.create_webhook(caller("root", "admin").user, url="http://127.0.0.1:9/", event_types=["*"])
    endpoint.sites.set([site])
    response = admin.post(f"/console/webhooks/{endpoint.pk}/rotate-secret/", {"overlap_hours": "9999"})
    assert response.status_code == 400 and "Must be between 0 and 720 hours." in shown(response)
    delivery = outbox.ping(caller("root", "admin").user, endpoint)
    response = admin.post(f"/console/webhook-deliveries/{delivery.pk}/replay/")
    assert response.status_code == 409 and "The delivery is still pending: it is being sent." in shown(response)
    endpoint.refresh_from_db()
    assert endpoint.secret == secret and not endpoint.previous_secret
    assert not HistoryEvent.objects.filter(action="outbox.delivery_replayed").exists()


def test_other_roles_get_403_and_admins_of_other_sites_404_and_nothing_changes(site, other_site, caller, live):
    root = caller("root", "admin").user
    endpoint, secret = outbox.create_webhook(root, url="http://127.0.0.1:9/", event_types=["*"], sites=["alpha"])
    delivery = outbox.ping(root, endpoint)
    tech = access_services.ensure_user_with_role("tess", "technician")
    access_services.grant_site(tech, site)
    technician = Client()
    technician.force_login(tech)
    stranger = admin_of("beta-boss", other_site)
    calls = [
        ("get", "/console/webhooks/", None),
        ("post", "/console/webhooks/", {"url": "http://127.0.0.1:9/x", "event_types": ["*"], "sites": ["alpha"]}),
        ("get", f"/console/webhooks/{endpoint.pk}/", None),
        ("post", f"/console/webhooks/{endpoint.pk}/ping/", {}),
        ("post", f"/console/webhooks/{endpoint.pk}/rotate-secret/", {"overlap_hours": "1"}),
        ("post", f"/console/webhook-deliveries/{delivery.pk}/replay/", {}),
        ("get", "/console/siem/", None),
    ]
    before = HistoryEvent.objects.filter(action__startswith="refused.").count()
    for method, path, body in calls:
        response = getattr(technician, method)(path, body) if body is not None else technician.get(path)
        assert response.status_code == 403, path
    assert HistoryEvent.objects.filter(action__startswith="refused.").count() == before + len(calls)
    assert 'href="/console/webhooks/"' not in shown(technician.get("/console/"))
    for method, path, body in calls[2:6]:
        response = getattr(stranger, method)(path, body) if body is not None else stranger.get(path)
        assert response.status_code == 404, path
    assert endpoint.name not in shown(stranger.get("/console/webhooks/"))
    endpoint.refresh_from_db()
    assert endpoint.secret == secret and Endpoint.objects.count() == 1
    assert Delivery.objects.count() == 1 and Delivery.objects.get().status == "pending"


def test_siem_destinations_show_their_state_and_lag(admin, site, other_site, caller, live):
    root = caller("root", "admin").user
    mine = siem.create_destination(root, kind="syslog", address="127.0.0.1:9", sites=["alpha"], name="alpha-siem")
    siem.create_destination(root, kind="syslog", address="127.0.0.1:9", sites=["beta"], name="beta-siem")
    for n in range(3):
        append("system", "console.test", mine, site_id=site.pk, payload={"n": n})
    page = shown(admin.get("/console/siem/"))
    assert f'data-destination="{mine.pk}"' in page and "beta-siem" not in page
    assert '<span data-field="state" class="">new</span>' in page
    assert re.search(r'data-field="lag">\d+ events</span>, <span data-field="lag-seconds">[\d.]+ s</span> behind', page)
    siem.ship(mine.pk, budget_seconds=1)  # nothing listens on port 9: the feed fails and keeps its place
    page = shown(admin.get("/console/siem/"))
    assert '<span data-field="state" class="offline">failing</span>' in page
    assert "ConnectionRefusedError" in page


def test_a_one_site_admins_lag_counts_only_the_destinations_sites(admin, site, other_site, caller, live):
    """Law 7: another site's history (and events of no site) is not counted, nor is its age shown."""
    root = caller("root", "admin").user
    mine = siem.create_destination(root, kind="syslog", address="127.0.0.1:9", sites=["alpha"], name="alpha-siem")
    for n in range(5):
        append("system", "console.foreign", mine, site_id=other_site.pk, payload={"n": n})
        append("system", "console.nowhere", mine, payload={"n": n})
    for n in range(3):
        append("system", "console.mine", mine, site_id=site.pk, payload={"n": n})
    page = shown(admin.get("/console/siem/"))
    assert re.search(r'data-field="lag">3 events</span>', page), page
    first = HistoryEvent.objects.filter(action="console.mine").order_by("sequence").first()
    now = first.created_at + timedelta(seconds=30)
    assert siem.lag(Destination.objects.get(pk=mine.pk), now=now) == siem.Lag(3, 30.0)
    listed = siem.lags(list(siem.visible_destinations(root)), now=now)
    assert listed[mine.pk] == siem.Lag(3, 30.0)


def test_a_disabled_webhooks_delivery_offers_no_replay(admin, site, caller, live, django_capture_on_commit_callbacks):
    """*Send again* is shown where the service would send again: not while pending, nor once the
    webhook is disabled (the service refuses both with 409)."""
    heard = Receiver()
    try:
        root = caller("root", "admin").user
        endpoint, _ = outbox.create_webhook(root, url=heard.url, event_types=["*"], sites=["alpha"])
        with django_capture_on_commit_callbacks(execute=True):
            delivery = outbox.ping(root, endpoint)
        detail = f"/console/webhooks/{endpoint.pk}/"
        assert f'data-replay="{delivery.pk}"' in shown(admin.get(detail)) and len(heard.accepted) == 1
        outbox.disable_webhook(root, endpoint)
        page = shown(admin.get(detail))
        assert ">delivered<" in page and f'data-replay="{delivery.pk}"' not in page
        with django_capture_on_commit_callbacks(execute=True):
            response = admin.post(f"/console/webhook-deliveries/{delivery.pk}/replay/")
        assert response.status_code == 409
        assert "The webhook is disabled: enable it to replay its deliveries." in shown(response)
        assert len(heard.accepted) == 1 and Delivery.objects.get().status == "delivered"
    finally:
        heard.close()


def test_the_shared_pieces_of_the_integrations_pages(admin, site, other_site, caller, live):
    """One literal for every type, one sorted list of an integration's sites, and a list page that
    answers a form's status (here a refused webhook, its list beside it)."""
    root = caller("root", "admin").user
    form = shown(admin.get("/console/webhooks/"))
    assert f'value="{outbox.EVERY_TYPE}"' in form and "* (every type)" in form
    endpoint, _ = outbox.create_webhook(root, url="http://127.0.0.1:9/", event_types=["*"], sites=["beta", "alpha"])
    destination = siem.create_destination(root, kind="syslog", address="127.0.0.1:9", sites=["beta", "alpha"])
    assert outbox.site_names(endpoint) == outbox.site_names(destination) == ["alpha", "beta"]
    request = RequestFactory().get("/console/webhooks/")
    request.user = root
    filterset = integrations.WebhookFilter({}, queryset=outbox.visible_webhooks(root))
    response = lists.list_page(request, integrations.WebhookTable, filterset, "console/list.html", status=409)
    assert response.status_code == 409 and f'data-webhook="{endpoint.pk}"' in shown(response)
    assert "alpha, beta" in shown(response)


def test_an_admin_pauses_resumes_and_deletes_a_siem_destination_on_the_console(admin, site, caller, live):
    root = caller("root", "admin").user
    made = siem.create_destination(root, kind="syslog", address="127.0.0.1:9", sites=["alpha"], name="alpha-siem")
    base = f"/console/siem/{made.pk}"
    assert f'data-pause="{made.pk}"' in shown(admin.get("/console/siem/"))

    response = admin.post(f"{base}/pause/")
    assert response.status_code == 302 and not Destination.objects.get(pk=made.pk).enabled
    page = shown(admin.get("/console/siem/"))
    assert "alpha-siem is paused at position" in page and f'data-resume="{made.pk}"' in page
    again = admin.post(f"{base}/pause/")
    assert again.status_code == 409 and "The destination is disabled already." in shown(again)
    assert admin.post(f"{base}/resume/").status_code == 302 and Destination.objects.get(pk=made.pk).enabled

    assert "stops the feed to it at position" in shown(admin.get(f"{base}/delete/"))
    unticked = admin.post(f"{base}/delete/", {})
    assert unticked.status_code == 400 and "Tick the box to confirm." in shown(unticked)
    assert Destination.objects.filter(pk=made.pk).exists()
    assert admin.post(f"{base}/delete/", {"confirm": "on"}).status_code == 302
    assert not Destination.objects.filter(pk=made.pk).exists()
    actions = HistoryEvent.objects.filter(subject_id=str(made.pk)).order_by("sequence").values_list("action", flat=True)
    assert list(actions)[-3:] == ["siem.destination_disabled", "siem.destination_enabled", "siem.destination_deleted"]


def test_other_roles_get_403_and_admins_of_other_sites_404_on_a_siem_destination(site, other_site, caller, live):
    root = caller("root", "admin").user
    made = siem.create_destination(root, kind="syslog", address="127.0.0.1:9", sites=["alpha"], name="alpha-siem")
    tech = access_services.ensure_user_with_role("tess", "technician")
    access_services.grant_site(tech, site)
    technician = Client()
    technician.force_login(tech)
    stranger = admin_of("beta-boss", other_site)
    for action, body in (("pause", {}), ("resume", {}), ("delete", {"confirm": "on"})):
        assert technician.post(f"/console/siem/{made.pk}/{action}/", body).status_code == 403
        assert stranger.post(f"/console/siem/{made.pk}/{action}/", body).status_code == 404
    assert technician.get(f"/console/siem/{made.pk}/delete/").status_code == 403
    made.refresh_from_db()
    assert made.enabled and Destination.objects.count() == 1


def test_an_admin_makes_a_siem_destination_on_the_console_and_bad_input_is_marked(admin, site, other_site, live):
    form = shown(admin.get("/console/siem/"))
    assert 'id="destination-form"' in form and 'value="alpha"' in form and 'value="beta"' not in form
    bad = admin.post("/console/siem/", {"kind": "syslog", "address": "not an address", "format": "json"})
    assert bad.status_code == 400 and "Nothing was made" in shown(bad) and not Destination.objects.exists()
    outside = admin.post("/console/siem/", {"kind": "syslog", "address": "127.0.0.1:9", "sites": ["beta"]})
    assert outside.status_code == 400 and not Destination.objects.exists()
    made = admin.post(
        "/console/siem/",
        {"kind": "syslog", "address": "127.0.0.1:9", "format": "cef", "sites": ["alpha"], "name": "alpha-siem"},
    )
    assert made.status_code == 302
    destination = Destination.objects.get(name="alpha-siem")
    assert destination.format == "cef" and not destination.tls and outbox.site_names(destination) == ["alpha"]
    assert "alpha-siem is made" in shown(admin.get("/console/siem/"))
    assert HistoryEvent.objects.filter(action="siem.destination_created", subject_id=str(destination.pk)).exists()
