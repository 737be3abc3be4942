"""Webhook subscriptions (docs/integrations.md): made through the API, each hears the event types and
sites it subscribed to and nothing else, through the outbox (signed, retried, every attempt kept);
its secret is shown once and rotated with an overlap during which both secrets sign; a ping; its
deliveries with their attempts, and replay. Bad input is refused with the field and changes
nothing; addresses a webhook may not reach (SSRF) are refused when it is made and when it is sent."""

from __future__ import annotations

import json
import socket
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from rmm.engine.services import kill_switches
from rmm.history.models import HistoryEvent
from rmm.history.services import verify_chain
from rmm.outbox import services as outbox
from rmm.outbox.models import Delivery, Endpoint
from tests.outbox.receivers import Receiver

ENGAGED, RELEASED = "kill_switch.engaged", "kill_switch.released"


@pytest.fixture
def receivers():
    made = []

    def make(**kwargs) -> Receiver:
        made.append(Receiver(**kwargs))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


@pytest.fixture
def live(settings, django_capture_on_commit_callbacks):
    """Deliveries are sent as their transaction commits (the task cluster's work, in this process)."""
    settings.RMM_TASKS_SYNC = True
    settings.RMM_PSA_WEBHOOK_URL = ""

    def run(work, *args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return work(*args, **kwargs)

    return run


@pytest.fixture
def root(caller):
    return caller("root", "admin")


def subscribe(who, url, event_types, sites=None, status=201) -> dict:
    body = {"url": url, "event_types": event_types}
    if sites is not None:
        body["sites"] = sites
    response = who.post("/api/v1/webhooks/", body, format="json")
    assert response.status_code == status, response.content
    return response.json()


def drain() -> None:
    """Send every pending delivery again and again, each time as if its backoff had passed."""
    for hours in range(1, 20):
        pending = list(Delivery.objects.filter(status="pending").values_list("pk", flat=True))
        if not pending:
            return
        for pk in pending:
            outbox.deliver(str(pk), timezone.now() + timedelta(hours=hours))
    raise AssertionError("deliveries still pending")


def verifies(secret: str, call: dict) -> bool:
    try:
        Webhook(secret).verify(call["raw"], call["headers"])
        return True
    except WebhookVerificationError:
        return False


def test_each_receiver_hears_what_it_subscribed_to_once_per_id_signed_also_across_a_rotation(
    root, site, other_site, receivers, live
):
    flaky, beta_only = receivers(fail_first=3), receivers()
    every = subscribe(root, flaky.url, [ENGAGED, RELEASED])  # every site, and events of none
    beta = subscribe(root, beta_only.url, [ENGAGED], sites=["beta"])

    switches = [
        live(kill_switches.engage, root.user, scope="site", target="alpha", reason="drill a"),
        live(kill_switches.engage, root.user, scope="site", target="beta", reason="drill b"),
        live(kill_switches.engage, root.user, scope="global", target=None, reason="drill all"),
    ]
    for switch in switches:
        live(kill_switches.release, root.user, switch, "over")
    drain()

    # The unrestricted one heard all six, the first three calls refused and sent again.
    assert flaky.types() == [ENGAGED] * 3 + [RELEASED] * 3
    assert [call["status"] for call in flaky.calls[:3]] == [503] * 3 and len(flaky.calls) == 9
    # The one restricted to beta heard beta's engagement alone: not alpha's, not the global one
    # (an event of no site), not a release (not subscribed).
    assert beta_only.types() == [ENGAGED] and len(beta_only.calls) == 1
    [told] = beta_only.calls
    assert json.loads(told["raw"])["data"]["site"] == str(other_site.pk)

    # Every id arrives; a repeat carries the same body as the first try; de-duplication by id
    # leaves one of each.
    expected = set(Delivery.objects.filter(endpoint_id=every["id"]).values_list("event__id", flat=True).distinct())
    by_id: dict[str, set[bytes]] = {}
    for call in flaky.calls:
        by_id.setdefault(call["headers"]["webhook-id"], set()).add(call["raw"])
    assert set(by_id) == {f"msg_{pk.hex}" for pk in expected} and len(by_id) == 6
    assert all(len(bodies) == 1 for bodies in by_id.values())
    # Every call, refused or not, is signed with the receiver's secret.
    assert all(verifies(every["secret"], call) for call in flaky.calls)
    assert all(verifies(beta["secret"], call) for call in beta_only.calls)
    assert not verifies(beta["secret"], flaky.calls[0])

    # A rotation with an overlap: both secrets sign, so the receiver can switch in its own time.
    rotated = root.post(f"/api/v1/webhooks/{every['id']}/rotate-secret/", {"overlap_hours": 1}, format="json")
    assert rotated.status_code == 200
    new_secret = rotated.json()["secret"]
    assert new_secret != every["secret"] and rotated.json()["previous_secret_signs_until"]
    switch = live(kill_switches.engage, root.user, scope="site", target="alpha", reason="after rotation")
    call = flaky.calls[-1]
    assert len(call["headers"]["webhook-signature"].split(" ")) == 2
    assert verifies(every["secret"], call) and verifies(new_secret, call)

    # A replay after the rotation: the same id and body, signed with both.
    delivery = Delivery.objects.get(endpoint_id=every["id"], event__subject_id=str(switch.pk))
    replayed = live(root.post, f"/api/v1/webhook-deliveries/{delivery.pk}/replay/")
    assert replayed.status_code == 200 and replayed.json()["event_id"] == call["headers"]["webhook-id"]
    again = flaky.calls[-1]
    assert again["raw"] == call["raw"] and again["headers"]["webhook-id"] == call["headers"]["webhook-id"]
    assert verifies(every["secret"], again) and verifies(new_secret, again)

    # Without an overlap the old secret stops signing at once.
    newest = root.post(f"/api/v1/webhooks/{every['id']}/rotate-secret/", {"overlap_hours": 0}, format="json")
    live(kill_switches.release, root.user, switch, "over")
    last = flaky.calls[-1]
    assert len(last["headers"]["webhook-signature"].split(" ")) == 1
    assert verifies(newest.json()["secret"], last) and not verifies(new_secret, last)
    assert verify_chain().ok  # every webhook change and delivery recorded, the chain intact


def test_the_secret_is_shown_once_and_never_again(root, site, receivers, live):
    hook = subscribe(root, receivers().url, [ENGAGED], sites=["alpha"])
    live(root.post, f"/api/v1/webhooks/{hook['id']}/ping/")
    for path in ("/api/v1/webhooks/", f"/api/v1/webhooks/{hook['id']}/", f"/api/v1/webhooks/{hook['id']}/deliveries/"):
        response = root.get(path)
        assert response.status_code == 200
        assert hook["secret"] not in response.content.decode() and 'secret"' not in response.content.decode()
    events = HistoryEvent.objects.filter(action__startswith="webhook.")
    assert {event.action for event in events} == {"webhook.created", "webhook.pinged"}
    assert all(hook["secret"] not in json.dumps(event.payload) for event in events)


def test_a_ping_reaches_that_webhook_alone_and_its_deliveries_list_every_attempt(root, site, receivers, live):
    first, second = receivers(fail_first=1), receivers()
    hook = subscribe(root, first.url, [ENGAGED], sites=["alpha"])
    subscribe(root, second.url, ["*"])
    answer = live(root.post, f"/api/v1/webhooks/{hook['id']}/ping/")
    assert answer.status_code == 202 and answer.json()["event_type"] == "webhook.ping"
    drain()
    assert first.types() == ["webhook.ping"] and second.calls == []
    assert verifies(hook["secret"], first.accepted[0])

    [delivery] = root.get(f"/api/v1/webhooks/{hook['id']}/deliveries/").json()["results"]
    assert delivery["status"] == "delivered" and delivery["attempt_count"] == 2
    assert [(a["number"], a["status_code"]) for a in delivery["attempts"]] == [(1, 503), (2, 204)]
    assert delivery["event_id"] == first.calls[0]["headers"]["webhook-id"]


def test_a_disabled_webhook_hears_nothing_and_can_be_enabled_again(root, site, receivers, live):
    receiver = receivers()
    hook = subscribe(root, receiver.url, [ENGAGED])
    assert root.delete(f"/api/v1/webhooks/{hook['id']}/").status_code == 204
    assert root.delete(f"/api/v1/webhooks/{hook['id']}/").status_code == 409
    assert root.get(f"/api/v1/webhooks/{hook['id']}/").json()["enabled"] is False
    assert root.post(f"/api/v1/webhooks/{hook['id']}/ping/").status_code == 409
    live(kill_switches.engage, root.user, scope="site", target="alpha", reason="unheard")
    assert receiver.calls == [] and not Delivery.objects.exists()

    changed = root.patch(f"/api/v1/webhooks/{hook['id']}/", {"enabled": True, "sites": ["alpha"]}, format="json")
    assert changed.status_code == 200 and changed.json()["sites"] == ["alpha"]
    live(kill_switches.engage, root.user, scope="global", target=None, reason="no site: not heard")
    live(kill_switches.engage, root.user, scope="site", target="alpha", reason="heard")
    assert receiver.types() == [ENGAGED]


def test_a_pending_delivery_is_not_replayed(root, site, receivers, live):
    hook = subscribe(root, receivers(fail_first=5).url, [ENGAGED])
    live(root.post, f"/api/v1/webhooks/{hook['id']}/ping/")
    delivery = Delivery.objects.get(endpoint_id=hook["id"])
    answer = root.post(f"/api/v1/webhook-deliveries/{delivery.pk}/replay/")
    assert answer.status_code == 409 and "pending" in answer.json()["detail"]


def test_a_redirect_is_a_failed_attempt_not_followed(root, site, receivers, live):
    target = receivers()
    bouncer = receivers(redirect_to=target.url)
    hook = subscribe(root, bouncer.url, [ENGAGED])
    live(root.post, f"/api/v1/webhooks/{hook['id']}/ping/")
    delivery = Delivery.objects.get(endpoint_id=hook["id"])
    assert delivery.status == "pending" and delivery.last_status_code == 307
    assert target.calls == []


def test_an_address_refused_after_the_webhook_was_made_is_not_sent_to(root, site, receivers, live, settings):
    receiver = receivers()
    hook = subscribe(root, receiver.url, [ENGAGED])
    settings.RMM_WEBHOOK_ALLOW_PRIVATE = False  # as if the name now resolved to a loopback address
    live(root.post, f"/api/v1/webhooks/{hook['id']}/ping/")
    delivery = Delivery.objects.get(endpoint_id=hook["id"])
    assert receiver.calls == [] and delivery.status == "pending"
    assert "loopback" in delivery.last_error and delivery.attempt_log.get().status_code is None


# --- refusals: the field and the reason, nothing changed -------------------------------------------

NOT_RESOLVING = "http://no-such-host.invalid/hook"


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({"url": "ftp://127.0.0.1/hook"}, "url", "http or https"),
        ({"url": "file:///etc/passwd"}, "url", "http or https"),
        ({"url": "http://169.254.169.254/latest/meta-data/"}, "url", "metadata"),
        ({"url": "http://169.254.10.1/hook"}, "url", "link-local"),
        ({"url": "http://[fe80::1]/hook"}, "url", "link-local"),
        ({"url": "http://[::ffff:169.254.169.254]/hook"}, "url", "metadata"),
        ({"url": "http://0.0.0.0:8000/hook"}, "url", "may reach"),
        ({"url": "http://224.0.0.1/hook"}, "url", "may reach"),
        ({"url": "http://user:pw@127.0.0.1/hook"}, "url", "user name"),
        ({"url": NOT_RESOLVING}, "url", "does not resolve"),
        ({"url": ""}, "url", "blank"),
        ({"event_types": ["job.exploded"]}, "event_types", "job.exploded"),
        ({"event_types": ["job.finished", "nope"]}, "event_types", "nope"),
        ({"event_types": []}, "event_types", "at least one"),
        ({"event_types": "job.finished"}, "event_types", "list"),
        ({"sites": ["gamma"]}, "sites", "gamma"),
        ({"name": "psa"}, "name", "exists"),
        ({"name": "bad\ud800"}, "name", "Surrogate"),
    ],
)
def test_bad_input_is_refused_with_the_field_and_changes_nothing(root, site, body, field, reason):
    full = {"url": "http://127.0.0.1:9/hook", "event_types": ["job.finished"], "sites": ["alpha"], **body}
    answer = root.post("/api/v1/webhooks/", full, format="json")
    assert answer.status_code == 400, answer.content
    assert list(answer.json()) == [field] and reason in answer.json()[field][0]
    assert not Endpoint.objects.exists()


@pytest.mark.parametrize(
    ("url", "reason"),
    [("http://127.0.0.1:9/hook", "loopback"), ("http://10.1.2.3/hook", "private"), ("http://localhost/", "itself")],
)
def test_loopback_and_private_addresses_need_the_setting(root, site, settings, url, reason):
    settings.RMM_WEBHOOK_ALLOW_PRIVATE = False
    answer = root.post("/api/v1/webhooks/", {"url": url, "event_types": [ENGAGED]}, format="json")
    assert answer.status_code == 400 and reason in answer.json()["url"][0]
    assert not Endpoint.objects.exists()


def test_the_server_s_own_name_is_refused_even_with_private_addresses_allowed(root, site):
    answer = root.post("/api/v1/webhooks/", {"url": f"http://{socket.gethostname()}:8000/", "event_types": [ENGAGED]})
    assert answer.status_code == 400 and "this server itself" in answer.json()["url"][0]


def test_a_change_is_checked_as_a_creation_is(root, site, receivers):
    hook = subscribe(root, receivers().url, [ENGAGED], sites=["alpha"])
    for body, field in (
        ({"url": "http://169.254.169.254/"}, "url"),
        ({"event_types": ["job.exploded"]}, "event_types"),
        ({"sites": ["gamma"]}, "sites"),
    ):
        answer = root.patch(f"/api/v1/webhooks/{hook['id']}/", body, format="json")
        assert answer.status_code == 400 and list(answer.json()) == [field]
    assert root.get(f"/api/v1/webhooks/{hook['id']}/").json() == {k: v for k, v in hook.items() if k != "secret"}
    answer = root.post(f"/api/v1/webhooks/{hook['id']}/rotate-secret/", {"overlap_hours": -1}, format="json")
    assert answer.status_code == 400 and list(answer.json()) == ["overlap_hours"]
    assert Endpoint.objects.get().previous_secret == ""


def test_only_admins_manage_webhooks_and_each_refusal_is_recorded(caller, site, root, receivers):
    hook = subscribe(root, receivers().url, [ENGAGED], sites=["alpha"])
    secret = Endpoint.objects.get().secret
    tech = caller("tech", "technician")
    for method, path in (
        ("post", "/api/v1/webhooks/"),
        ("get", "/api/v1/webhooks/"),
        ("get", f"/api/v1/webhooks/{hook['id']}/"),
        ("post", f"/api/v1/webhooks/{hook['id']}/rotate-secret/"),
    ):
        assert getattr(tech, method)(path, {}, format="json").status_code == 403
    refusals = HistoryEvent.objects.filter(action__startswith="refused.webhook.", actor="user:tech")
    assert refusals.count() == 4
    assert Endpoint.objects.get().secret == secret and Endpoint.objects.count() == 1


def test_an_admin_of_some_sites_manages_webhooks_of_those_sites_only(caller, site, other_site, root, receivers):
    mine = caller("alpha-admin", "admin", [site])
    theirs = subscribe(root, receivers().url, [ENGAGED], sites=["beta"])
    unrestricted = subscribe(root, receivers().url, [ENGAGED])
    own = subscribe(mine, receivers().url, [ENGAGED], sites=["alpha"])
    assert [row["id"] for row in mine.get("/api/v1/webhooks/").json()["results"]] == [own["id"]]
    for hook in (theirs, unrestricted):
        assert mine.get(f"/api/v1/webhooks/{hook['id']}/").status_code == 404
        assert mine.post(f"/api/v1/webhooks/{hook['id']}/rotate-secret/").status_code == 404
    # Every site, or a site not its own, is beyond it.
    answer = mine.post("/api/v1/webhooks/", {"url": receivers().url, "event_types": [ENGAGED]}, format="json")
    assert answer.status_code == 403
    assert HistoryEvent.objects.filter(action="refused.webhook.sites", actor="user:alpha-admin").count() == 1
    subscribe(mine, receivers().url, [ENGAGED], sites=["beta"], status=400)
    widen = mine.patch(f"/api/v1/webhooks/{own['id']}/", {"sites": []}, format="json")
    assert widen.status_code == 403 and Endpoint.objects.get(pk=own["id"]).sites.count() == 1
    assert Endpoint.objects.count() == 3


# --- sending in batches ---------------------------------------------------------------------------


def pinged(root, hook: dict, times: int) -> list[Delivery]:
    """Pings queued, their tasks not run: a backlog for the endpoint."""
    endpoint = Endpoint.objects.get(pk=hook["id"])
    for _ in range(times):
        outbox.ping(root.user, endpoint)
    return list(Delivery.objects.filter(endpoint=endpoint).order_by("next_attempt_at"))


def test_a_backlog_goes_out_oldest_first_in_batches_over_one_connection(root, site, receivers, settings):
    settings.RMM_WEBHOOK_BATCH = 4
    receiver = receivers()
    hook = subscribe(root, receiver.url, [ENGAGED])
    backlog = pinged(root, hook, 10)
    with CaptureQueriesContext(connection) as queries:
        assert outbox.send_endpoint(str(backlog[-1].pk)) == 10  # one task sends them all
    assert [call["headers"]["webhook-id"] for call in receiver.calls] == [d.event.message_id for d in backlog]
    assert receiver.connections == 1
    for delivery in backlog:
        delivery.refresh_from_db()
        assert delivery.status == "delivered" and delivery.attempts == 1 and delivery.last_status_code == 204
        assert list(delivery.attempt_log.values_list("number", "status_code")) == [(1, 204)]
    delivered = HistoryEvent.objects.filter(action="outbox.delivered").order_by("sequence")
    assert [e.subject_id for e in delivered] == [str(d.pk) for d in backlog]
    assert verify_chain().ok
    # Three batches: each a constant number of statements, and one to store each event's body.
    assert len(queries.captured_queries) <= 3 * 13 + 10  # one at a time took 13 each: 130
    assert outbox.send_endpoint(str(backlog[0].pk)) == 0  # the other deliveries' tasks find nothing due


def test_a_receiver_that_answers_503_is_not_tried_again_for_the_rest_of_the_batch(root, site, receivers):
    receiver = receivers(fail_first=1)
    hook = subscribe(root, receiver.url, [ENGAGED])
    backlog = pinged(root, hook, 3)
    assert outbox.send_endpoint(str(backlog[0].pk)) == 0
    assert len(receiver.calls) == 1
    first, *rest = backlog
    first.refresh_from_db()
    assert first.attempts == 1 and first.last_status_code == 503 and first.status == "pending"
    for delivery in rest:
        delivery.refresh_from_db()
        assert delivery.attempts == 0 and delivery.status == "pending" and not delivery.attempt_log.exists()
        assert delivery.next_attempt_at == first.next_attempt_at  # they wait as long as the failed one
    assert outbox.send_endpoint(str(first.pk)) == 0  # not due yet
    assert outbox.send_endpoint(str(first.pk), now=timezone.now() + timedelta(hours=1)) == 3
    assert [call["status"] for call in receiver.calls] == [503, 204, 204, 204]


def test_a_receiver_that_drops_an_idle_connection_gets_the_next_delivery_on_a_new_one(root, site, receivers):
    receiver = receivers()
    hook = subscribe(root, receiver.url, [ENGAGED])
    backlog = pinged(root, hook, 2)
    endpoint = Endpoint.objects.get(pk=hook["id"])
    from rmm.outbox import transport

    with transport.Connection(endpoint.url, 5) as kept:
        assert kept.post(b"{}", {"Content-Type": "application/json"})[0] == 204
        receiver.close_connections()
        assert kept.post(b"{}", {"Content-Type": "application/json"})[0] == 204
    assert receiver.connections == 2
    assert outbox.send_endpoint(str(backlog[0].pk)) == 2
