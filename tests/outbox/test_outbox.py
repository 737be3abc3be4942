"""The outbox: events written with the change that caused them, delivered to a real receiver on
127.0.0.1 that fails and goes away, retried with backoff, every attempt kept, signed per the
Standard Webhooks specification, the same id and body on every repeat, dead and replayable."""

from __future__ import annotations

import io
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from rmm.history.models import HistoryEvent
from rmm.history.services import verify_chain
from rmm.outbox import services as outbox
from rmm.outbox.models import Attempt, Delivery, Event
from scripting import services as scripting
from tests.e2e.psa import PsaReceiver
from tests.helpers import approved_authority, approved_script, make_agent


@pytest.fixture
def receiver(settings):
    psa = PsaReceiver()
    settings.RMM_PSA_WEBHOOK_URL = psa.url
    settings.RMM_PSA_WEBHOOK_SECRET = psa.secret
    settings.RMM_TASKS_SYNC = True
    settings.RMM_WEBHOOK_MAX_ATTEMPTS = 4
    yield psa
    psa.close()


@pytest.fixture
def world(caller, site):
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    agent, _ = make_agent(site, "web-01")
    task = approved_authority(site, psa.user)
    script = approved_script(tech.user, boss.user)

    def job(asset_id=agent.asset_id):
        return scripting.create_script_job(psa.user, script_id=script.pk, asset_id=asset_id, psa_task_id=task.pk)

    # A job that stays queued keeps the case open: these tests follow job.finished alone, with no
    # case.may_close beside it (tests/outbox/test_case_and_presence_events.py).
    job(make_agent(site, "web-02")[0].asset_id)
    return SimpleNamespace(psa=psa, boss=boss, job=job)


def finish(world, capture) -> tuple:
    """A job that reaches a final status (aborted): the PSA is told."""
    job = world.job()
    with capture(execute=True):
        _abort(job, world)
    return job, Delivery.objects.get(event__subject_id=str(job.pk))


def _abort(job, world):
    from rmm.engine import services as engine

    engine.transition_job(job, "aborted", world.boss.user, reason="stopped")


def later(seconds: float):
    return timezone.now() + timedelta(seconds=seconds)


def test_a_finished_job_is_delivered_signed_once_its_transaction_commits(
    world, receiver, django_capture_on_commit_callbacks
):
    job, delivery = finish(world, django_capture_on_commit_callbacks)
    delivery.refresh_from_db()
    assert delivery.status == "delivered" and delivery.attempts == 1
    [told] = receiver.received
    assert told["signed"] and told["id"] == delivery.event.message_id
    assert told["body"]["event"] == "job.finished" and told["body"]["job_id"] == str(job.pk)
    # Signed: the receiver verified it with the Standard Webhooks library and the PSA's secret.
    [attempt] = Attempt.objects.filter(delivery=delivery)
    assert attempt.status_code == 204 and attempt.error == "" and attempt.latency_ms >= 0
    assert HistoryEvent.objects.filter(action="outbox.delivered", subject_id=str(delivery.pk)).count() == 1


def test_an_event_exists_only_if_its_change_committed(world, receiver):
    job = world.job()
    with pytest.raises(RuntimeError), transaction.atomic():
        _abort(job, world)
        assert Event.objects.filter(subject_id=str(job.pk)).count() == 1
        raise RuntimeError("the change fails after the event was written")
    assert not Event.objects.filter(subject_id=str(job.pk)).exists()
    assert receiver.received == []


def test_a_failing_receiver_gets_the_same_id_and_body_again_after_a_growing_backoff(
    world, receiver, django_capture_on_commit_callbacks
):
    receiver.fail_next = 2
    job, delivery = finish(world, django_capture_on_commit_callbacks)
    delivery.refresh_from_db()
    assert delivery.status == "pending" and delivery.attempts == 1 and delivery.last_status_code == 503
    first_wait = delivery.next_attempt_at - timezone.now()
    assert timedelta(seconds=5) < first_wait < timedelta(seconds=15)  # 10 s ± 25 %

    # Not due yet: nothing is sent.
    assert outbox.send_due(timezone.now()) == 0
    with django_capture_on_commit_callbacks() as queued:
        assert outbox.send_due(later(20)) == 1
    assert len(queued) == 1  # the send is queued once the sweep's transaction commits
    assert outbox.deliver(str(delivery.pk), later(20)) == "pending"
    delivery.refresh_from_db()
    assert delivery.attempts == 2 and delivery.status == "pending"
    assert delivery.next_attempt_at - timezone.now() > timedelta(seconds=14)  # 20 s ± 25 %

    # The receiver goes away and comes back on its port; meanwhile the attempt fails to connect.
    receiver.stop()
    assert outbox.deliver(str(delivery.pk), later(60)) == "pending"
    delivery.refresh_from_db()
    assert delivery.attempts == 3 and delivery.last_status_code is None and "Connection refused" in delivery.last_error
    receiver.start()
    assert outbox.deliver(str(delivery.pk), later(3600)) == "delivered"

    attempts = list(Attempt.objects.filter(delivery=delivery).values_list("number", "status_code"))
    assert attempts == [(1, 503), (2, 503), (3, None), (4, 204)]
    sent = [item["raw"] for item in receiver.refused] + [item["raw"] for item in receiver.received]
    ids = {item["id"] for item in receiver.refused} | {item["id"] for item in receiver.received}
    assert len(set(sent)) == 1 and ids == {delivery.event.message_id}  # a repeat is the same message
    assert [item["body"]["job_id"] for item in receiver.received] == [str(job.pk)]


def test_a_delivery_out_of_attempts_is_dead_recorded_and_can_be_replayed(
    world, receiver, django_capture_on_commit_callbacks
):
    receiver.fail_next = 100
    _, delivery = finish(world, django_capture_on_commit_callbacks)
    for hours in range(1, 4):
        outbox.deliver(str(delivery.pk), later(hours * 3600))
    delivery.refresh_from_db()
    assert delivery.status == "dead" and delivery.attempts == 4 and delivery.next_attempt_at is None
    [dead] = HistoryEvent.objects.filter(action="outbox.delivery_dead")
    assert dead.payload["attempt"] == 4 and dead.payload["http_status"] == 503
    assert outbox.send_due(later(86400)) == 0  # a dead delivery is not retried

    receiver.fail_next = 0
    with django_capture_on_commit_callbacks(execute=True):
        out = io.StringIO()
        call_command("rmm_outbox", "replay", str(delivery.pk), stdout=out)
    delivery.refresh_from_db()
    assert delivery.status == "delivered" and delivery.attempts == 5
    assert receiver.received[0]["id"] == delivery.event.message_id
    assert receiver.received[0]["raw"] == receiver.refused[0]["raw"]
    assert HistoryEvent.objects.filter(action="outbox.delivery_replayed", actor="cli:rmm_outbox").count() == 1
    # A pending delivery is not replayed over itself.
    with django_capture_on_commit_callbacks(execute=False):
        outbox.replay(delivery, "cli:test")
    with pytest.raises(outbox.OutboxError):
        outbox.replay(delivery, "cli:test")
    assert verify_chain().ok


def test_without_an_endpoint_nothing_is_written(world, settings, django_assert_num_queries):
    settings.RMM_PSA_WEBHOOK_URL = ""
    job = world.job()
    with django_assert_num_queries(1):  # whether any webhook subscription exists
        outbox.emit("job.finished", job, site_id=job.site_id, data={"kind": "script"})
    assert not Event.objects.exists()


def test_an_unregistered_event_type_is_refused(world, receiver):
    job = world.job()
    with pytest.raises(outbox.OutboxError):
        outbox.emit("job.exploded", job)


def test_an_endpoint_without_a_secret_gets_nothing_unsigned(
    world, receiver, settings, django_capture_on_commit_callbacks
):
    settings.RMM_PSA_WEBHOOK_SECRET = ""
    _, delivery = finish(world, django_capture_on_commit_callbacks)
    delivery.refresh_from_db()
    assert delivery.status == "pending" and "no secret" in delivery.last_error
    assert receiver.received == [] and receiver.refused == []


def test_the_backoff_doubles_up_to_an_hour_with_jitter(settings):
    settings.RMM_WEBHOOK_RETRY_BASE_SECONDS = 10
    waits = [[outbox.backoff(n).total_seconds() for _ in range(50)] for n in (1, 2, 3, 12)]
    assert all(7.5 <= w <= 12.5 for w in waits[0]) and len(set(waits[0])) > 1
    assert all(15 <= w <= 25 for w in waits[1]) and all(30 <= w <= 50 for w in waits[2])
    assert all(2700 <= w <= 4500 for w in waits[3])


def test_a_new_secret_is_a_standard_webhooks_secret():
    secret = outbox.new_secret()
    assert secret.startswith("whsec_")
    Webhook(secret)  # the library accepts it


def test_a_kill_switch_engaged_and_released_is_told_with_what_it_was_then(
    caller, site, receiver, django_capture_on_commit_callbacks
):
    from rmm.engine.services import kill_switches

    boss = caller("boss", "approver")
    with django_capture_on_commit_callbacks(execute=True):
        switch = kill_switches.engage(boss.user, scope="site", target=site.name, reason="ransomware seen")
    with django_capture_on_commit_callbacks(execute=True):
        kill_switches.release(caller("other", "approver").user, switch, reason="contained")
    engaged, released = (item["body"] for item in receiver.received)
    assert engaged["event"] == "kill_switch.engaged" and engaged["released"] is False
    assert engaged["reason"] == "ransomware seen" and engaged["site"] == str(site.pk)
    assert released["event"] == "kill_switch.released" and released["released"] is True
    assert released["released_by"] == "other" and released["release_reason"] == "contained"
