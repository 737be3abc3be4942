"""The SIEM feed (docs/integrations.md#the-siem-feed): destinations made through the API, each fed
every history event (of its sites) in chain order by real collectors on 127.0.0.1 (Splunk HEC and
Elastic bulk over HTTP, RFC 5424 syslog over TCP and TLS). A collector that is down loses nothing:
the cursor stays until it acknowledges, and the feed resumes in order. Bad input is refused with the
field and changes nothing; only admins may touch destinations."""

from __future__ import annotations

import json
import ssl
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from rmm.deploy.tls import certificates
from rmm.history.models import HistoryEvent
from rmm.siem import services as siem
from rmm.siem.models import Destination
from tests.siem.collectors import HttpCollector, SyslogCollector
from tests.siem.world import job_world


@pytest.fixture
def root(caller):
    return caller("root", "admin")


@pytest.fixture
def world(caller, site, settings):
    return job_world(caller, site, settings)


@pytest.fixture
def collectors():
    made = []

    def make(kind=HttpCollector, **kwargs):
        made.append(kind(**kwargs))
        return made[-1]

    yield make
    for collector in made:
        collector.close()


def create(who, status=201, **body) -> dict:
    response = who.post("/api/v1/siem-destinations/", body, format="json")
    assert response.status_code == status, response.content
    return response.json()


def ship_all(hours: int = 1) -> None:
    """Ship every destination as if its backoff had passed."""
    for pk in Destination.objects.values_list("pk", flat=True):
        siem.ship(pk, now=timezone.now() + timedelta(hours=hours))


def sequences_after(start: int, site_id=None) -> list[int]:
    rows = HistoryEvent.objects.filter(sequence__gt=start).order_by("sequence")
    if site_id is not None:
        rows = rows.filter(site_id=site_id)
    return list(rows.values_list("sequence", flat=True))


@pytest.mark.parametrize("fmt", ["json", "cef"], ids=["json", "cef"])
def test_splunk_hec_gets_every_event_in_order_and_resumes_after_an_outage(root, world, collectors, fmt):
    hec = collectors()
    made = create(root, kind="http", shape="splunk_hec", address=hec.url, token="hec-token", format=fmt)
    assert made["state"] == "new" and made["has_token"] and "token" not in made
    start = made["position"]
    world.run_job()
    ship_all()
    delivered = hec.splunk_events()
    assert all(call["headers"]["authorization"] == "Splunk hec-token" for call in hec.calls)
    assert {call["path"] for call in hec.calls} == {"/services/collector/event"}

    hec.down = True
    job = world.run_job()  # appended while the collector is down
    ship_all(1)
    ship_all(2)
    detail = root.get(f"/api/v1/siem-destinations/{made['id']}/").json()
    assert detail["state"] == "failing" and detail["failures"] == 2 and "HTTP 503" in detail["last_error"]
    assert detail["lag"] == detail["head"] - detail["position"] > 0 and detail["lag_seconds"] >= 0
    assert len(hec.splunk_events()) == len(delivered)  # nothing new accepted; the cursor waited

    hec.down = False
    ship_all(3)
    events = hec.splunk_events()
    if fmt == "json":
        got = [item["event"]["sequence"] for item in events]
        assert any(item["event"]["subject_id"] == str(job.pk) for item in events)
    else:
        got = [int(item["event"].split("externalId=")[1].split(" ")[0]) for item in events]
        assert all(item["event"].startswith("CEF:0|RMM|") for item in events)
    # Every event after the destination's creation, its own creation first, each once, in order;
    # the feed's own failure and resumption are events too.
    assert got == sequences_after(start)
    actions = list(HistoryEvent.objects.filter(sequence__in=got).values_list("action", flat=True))
    assert actions[0] == "siem.destination_created" and "siem.failing" in actions and "siem.resumed" in actions
    detail = root.get(f"/api/v1/siem-destinations/{made['id']}/").json()
    assert detail["state"] == "delivering" and detail["failures"] == 0 and detail["delivered_at"]


def test_elastic_bulk_stores_each_event_once_across_a_lost_answer(root, world, collectors, settings):
    elastic = collectors()
    made = create(root, kind="http", shape="elastic_bulk", address=elastic.url, index="rmm-audit", token="key")
    settings.RMM_SIEM_BATCH = 3  # several batches per run
    world.run_job()
    ship_all()
    assert all(call["headers"]["authorization"] == "ApiKey key" for call in elastic.calls)
    assert all(call["headers"]["content-type"] == "application/x-ndjson" for call in elastic.calls)
    assert len(elastic.calls) > 1

    # The collector stores a batch but its answer is lost: the same batch is sent again, its
    # documents refused as duplicates (409 per item), and the feed goes on.
    world.run_job()
    elastic.lose_answers = 1
    ship_all(1)
    assert Destination.objects.get(pk=made["id"]).failures == 1
    ship_all(2)
    assert elastic.duplicates == 3  # the batch whose answer was lost came again, whole
    documents = elastic.elastic_documents()
    assert [d["sequence"] for d in documents] == sequences_after(made["position"])
    assert json.loads(elastic.calls[0]["raw"].splitlines()[0])["create"]["_index"] == "rmm-audit"
    HistoryEvent.objects.get(hash=documents[-1]["hash"])
    # A bulk answer whose items failed (not as duplicates) is a failed batch: the cursor stays.
    elastic.answer = lambda path, raw: (200, {"errors": True, "items": [{"create": {"status": 400}}]})
    world.run_job()
    before = Destination.objects.get(pk=made["id"]).cursor
    ship_all(3)
    stuck = Destination.objects.get(pk=made["id"])
    assert stuck.cursor == before and "_bulk refused an item" in stuck.last_error


def test_a_destination_restricted_to_a_site_hears_only_its_events(root, world, collectors, other_site):
    alpha, beta = collectors(), collectors()
    a = create(root, kind="http", shape="elastic_bulk", address=alpha.url, sites=["alpha"])
    create(root, kind="http", shape="elastic_bulk", address=beta.url, sites=["beta"])
    world.run_job()
    ship_all()
    got = [d["sequence"] for d in alpha.elastic_documents()]
    assert got and got == sequences_after(a["position"], site_id=world.site.pk)
    assert beta.elastic_documents() == []  # nothing of beta happened (their creations are of no site)
    assert {d.cursor for d in Destination.objects.all()} == {siem.head()}
    listed = root.get("/api/v1/siem-destinations/").json()["results"]
    assert all(item["lag"] == 0 for item in listed)  # caught up: the others' events were passed over


def test_syslog_over_tcp_octet_counted_rfc_5424_in_order_across_an_outage(root, world, collectors, settings):
    settings.RMM_SIEM_HOSTNAME = "rmm-test"
    syslog = collectors(SyslogCollector)
    made = create(root, kind="syslog", address=syslog.address, format="json")
    world.run_job()
    ship_all()
    syslog.stop()
    world.run_job()
    ship_all(1)
    assert Destination.objects.get(pk=made["id"]).failures == 1
    syslog.start()
    ship_all(2)
    got = []
    for line in syslog.messages:
        assert line.startswith(b"<110>1 ") or line.startswith(b"<108>1 ")
        header, msg = line.split(b"] ", 1)
        assert header.split(b" ")[2:4] == [b"rmm-test", b"rmm"]
        got.append(json.loads(msg)["sequence"])
    assert got == sequences_after(made["position"])


def test_syslog_over_tls_with_the_destinations_ca(root, world, collectors, tmp_path):
    ca, cert, key = certificates(tmp_path / "tls")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    syslog = collectors(SyslogCollector, context=server)
    made = create(root, kind="syslog", address=syslog.address, tls=True, format="cef", ca_certificate=ca.read_text())
    world.run_job()
    ship_all()
    got = [line.split(b"] ", 1)[1] for line in syslog.messages]
    assert got and all(msg.startswith(b"CEF:0|RMM|") for msg in got)
    assert len(got) == len(sequences_after(made["position"]))
    # A collector whose certificate the destination's CA did not issue gets nothing.
    other_ca, _, _ = certificates(tmp_path / "other", name="another CA")
    Destination.objects.filter(pk=made["id"]).update(ca_certificate=other_ca.read_text())
    world.run_job()
    ship_all(1)
    assert "CERTIFICATE_VERIFY_FAILED" in Destination.objects.get(pk=made["id"]).last_error


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "kafka", "address": "127.0.0.1:514"}, "kind"),
        ({"kind": "syslog", "address": "127.0.0.1:514", "format": "leef"}, "format"),
        ({"kind": "syslog", "address": ""}, "address"),
        ({"kind": "syslog", "address": "169.254.169.254:514"}, "address"),
        ({"kind": "syslog", "address": "[fe80::1]:514"}, "address"),
        ({"kind": "syslog", "address": "127.0.0.1:514/path"}, "address"),
        ({"kind": "syslog", "address": "127.0.0.1:514", "shape": "splunk_hec"}, "shape"),
        ({"kind": "http", "address": "http://127.0.0.1:8088"}, "shape"),
        ({"kind": "http", "address": "ftp://127.0.0.1/", "shape": "elastic_bulk"}, "address"),
        ({"kind": "http", "address": "http://169.254.169.254/", "shape": "elastic_bulk"}, "address"),
        ({"kind": "http", "address": "http://127.0.0.1:9200", "shape": "elastic_bulk", "tls": True}, "address"),
        ({"kind": "http", "address": "http://127.0.0.1:8088", "shape": "splunk_hec"}, "token"),
        ({"kind": "syslog", "address": "127.0.0.1:6514", "tls": True, "ca_certificate": "nope"}, "ca_certificate"),
        ({"kind": "syslog", "address": "127.0.0.1:514", "ca_certificate": "x"}, "ca_certificate"),
        ({"kind": "syslog", "address": "127.0.0.1:6514", "tls": True, "ca_certificate": "\u00e9"}, "ca_certificate"),
        ({"kind": "http", "address": "http://127.0.0.1:8088", "shape": "splunk_hec", "token": "a\nb"}, "token"),
        ({"kind": "syslog", "address": "127.0.0.1:514", "sites": ["nowhere"]}, "sites"),
    ],
    ids=[
        "kind",
        "format",
        "no-address",
        "metadata",
        "link-local-v6",
        "not-host-port",
        "shape-on-syslog",
        "http-without-shape",
        "not-http",
        "metadata-url",
        "tls-on-http",
        "hec-without-token",
        "bad-ca",
        "ca-without-tls",
        "ca-not-ascii",
        "token-with-newline",
        "unknown-site",
    ],
)
def test_bad_input_is_refused_with_the_field_and_changes_nothing(root, site, body, field):
    answer = create(root, status=400, **body)
    assert field in answer, answer
    assert not Destination.objects.exists()


def test_the_server_itself_is_refused_unless_private_addresses_are_allowed(root, settings):
    settings.RMM_WEBHOOK_ALLOW_PRIVATE = False
    assert "loopback" in create(root, status=400, kind="syslog", address="127.0.0.1:514")["address"][0]


def test_only_admins_touch_destinations_and_the_refusal_is_recorded(caller, root, site, other_site):
    made = create(root, kind="syslog", address="127.0.0.1:9", sites=["alpha"])
    tech = caller("tech2", "technician")
    assert tech.get("/api/v1/siem-destinations/").status_code == 403
    assert tech.post("/api/v1/siem-destinations/", {}, format="json").status_code == 403
    assert tech.delete(f"/api/v1/siem-destinations/{made['id']}/").status_code == 403
    assert HistoryEvent.objects.filter(action="refused.siem.destroy").exists()
    # An admin of beta alone sees nothing of alpha's, and may not make a destination for every site.
    beta_admin = caller("beta-admin", "admin", sites=[other_site])
    assert beta_admin.get("/api/v1/siem-destinations/").json()["results"] == []
    assert beta_admin.get(f"/api/v1/siem-destinations/{made['id']}/").status_code == 404
    assert (
        beta_admin.post(
            "/api/v1/siem-destinations/", {"kind": "syslog", "address": "127.0.0.1:9"}, format="json"
        ).status_code
        == 403
    )
    assert root.delete(f"/api/v1/siem-destinations/{made['id']}/").status_code == 204
    assert not Destination.objects.exists()
    assert HistoryEvent.objects.filter(action="siem.destination_deleted").exists()


def test_from_start_sends_the_whole_history(root, world, collectors):
    world.run_job()
    elastic = collectors()
    made = create(root, kind="http", shape="elastic_bulk", address=elastic.url, from_start=True)
    assert made["position"] == 0
    ship_all()
    assert [d["sequence"] for d in elastic.elastic_documents()] == sequences_after(0)


def test_one_worker_at_a_time_ships_a_destination(root, collectors):
    elastic = collectors()
    made = create(root, kind="http", shape="elastic_bulk", address=elastic.url)
    Destination.objects.filter(pk=made["id"]).update(lease_until=timezone.now() + timedelta(seconds=30))
    assert siem.ship(made["id"]).batches == 0 and elastic.calls == []
    Destination.objects.filter(pk=made["id"]).update(lease_until=None)
    assert siem.ship(made["id"]).sent == 1 and len(elastic.calls) == 1


def test_a_paused_destination_keeps_its_position_and_resumes_from_it(root, world, collectors):
    elastic = collectors()
    made = create(root, kind="http", shape="elastic_bulk", address=elastic.url)
    url = f"/api/v1/siem-destinations/{made['id']}/"
    paused = root.patch(url, {"enabled": False}, format="json")
    assert paused.status_code == 200 and paused.json()["state"] == "disabled"
    assert root.patch(url, {"enabled": False}, format="json").status_code == 409
    world.run_job()
    ship_all()
    assert elastic.calls == []
    assert root.patch(url, {"enabled": True}, format="json").json()["lag"] > 0
    ship_all()
    assert [d["sequence"] for d in elastic.elastic_documents()] == sequences_after(made["position"])


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="two runs at once: SQLite's in-memory test database refuses a second connection's writes instead of waiting",
)
def test_each_follow_run_hands_over_to_the_next_without_a_gap(root, world, collectors, settings, flushable_append_only):
    """The minute's run follows until the next run starts, then stops within a poll: no stretch
    of time is left unfollowed between two runs, and two never follow together for long."""
    import threading

    settings.RMM_SIEM_POLL_SECONDS = 0.05
    elastic = collectors()
    made = create(root, kind="http", shape="elastic_bulk", address=elastic.url)
    ended = {}

    def run(name: str, seconds: float) -> None:
        try:
            siem.follow(seconds)
        finally:
            ended[name] = time.monotonic()
            connection.close()

    first = threading.Thread(target=run, args=("first", 60))
    first.start()
    world.run_job()
    wait_until(lambda: [d["sequence"] for d in elastic.elastic_documents()] == sequences_after(made["position"]))
    assert first.is_alive()  # it goes on following past its first delivery

    second = threading.Thread(target=run, args=("second", 60))
    started = time.monotonic()
    second.start()
    first.join(10)
    assert not first.is_alive() and ended["first"] - started < 5
    world.run_job()  # after the first run stopped: the second ships it
    wait_until(lambda: [d["sequence"] for d in elastic.elastic_documents()] == sequences_after(made["position"]))
    assert second.is_alive()
    siem._take_over()  # as the next minute's run does
    second.join(10)
    assert not second.is_alive()


def wait_until(check, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.05)
