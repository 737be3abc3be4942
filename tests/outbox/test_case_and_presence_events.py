"""The engine's own outbox events beyond a job's end: ``case.may_close`` when the last job under a
PSA case ends, ``agent.offline`` / ``agent.online`` as the sweep sees agents go and come back.
Delivered to a real receiver on 127.0.0.1, signed."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from rmm.engine import services as engine
from rmm.inventory import services as inventory
from rmm.inventory.models import Agent
from rmm.outbox.models import Event
from scripting import services as scripting
from tests.e2e.psa import PsaReceiver
from tests.helpers import approved_authority, approved_script, make_agent


@pytest.fixture
def receiver(settings):
    psa = PsaReceiver()
    settings.RMM_PSA_WEBHOOK_URL = psa.url
    settings.RMM_PSA_WEBHOOK_SECRET = psa.secret
    settings.RMM_TASKS_SYNC = True
    yield psa
    psa.close()


def told(receiver, event: str) -> list[dict]:
    return [item["body"] for item in receiver.received if item["body"]["event"] == event and item["signed"]]


@pytest.fixture
def world(caller, site):
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    agents = [make_agent(site, f"web-{n:02d}")[0] for n in range(2)]
    task = approved_authority(site, psa.user)
    script = approved_script(tech.user, boss.user)

    def job(agent, task=task):
        return scripting.create_script_job(psa.user, script_id=script.pk, asset_id=agent.asset_id, psa_task_id=task.pk)

    return SimpleNamespace(psa=psa, boss=boss, agents=agents, task=task, job=job)


def end(job, world, to="aborted"):
    engine.transition_job(job, to, world.boss.user, reason="stopped")


def test_the_case_may_close_once_its_last_job_ends_with_the_count_of_each_status(
    world, receiver, django_capture_on_commit_callbacks
):
    first, second = world.job(world.agents[0]), world.job(world.agents[1])
    with django_capture_on_commit_callbacks(execute=True):
        end(first, world)
    assert told(receiver, "case.may_close") == []  # the second job is still queued

    with django_capture_on_commit_callbacks(execute=True):
        end(second, world, to="aborted")
    [case] = told(receiver, "case.may_close")
    assert case["psa_case_id"] == str(world.task.case_id) and case["title"] == "Patch Tuesday"
    assert case["jobs"] == {"aborted": 2} and case["jobs_total"] == 2
    assert case["site"] == str(world.agents[0].asset.site_id)
    assert len(told(receiver, "job.finished")) == 2


def test_a_job_under_another_task_of_the_case_keeps_it_open(world, receiver, site, django_capture_on_commit_callbacks):
    from rmm.authority import services as authority

    other_task = authority.upsert_task(
        world.psa.user, __import__("uuid").uuid4(), case_id=world.task.case_id, title="Reboot", status="approved"
    )
    first, other = world.job(world.agents[0]), world.job(world.agents[1], task=other_task)
    with django_capture_on_commit_callbacks(execute=True):
        end(first, world)
    assert told(receiver, "case.may_close") == []
    with django_capture_on_commit_callbacks(execute=True):
        end(other, world)
    assert len(told(receiver, "case.may_close")) == 1


def test_without_an_endpoint_a_job_end_reads_nothing_more(world, settings):
    settings.RMM_PSA_WEBHOOK_URL = ""
    heard, silent = world.job(world.agents[0]), world.job(world.agents[1])
    with CaptureQueriesContext(connection) as quiet:
        end(silent, world)
    assert not any("scripting_scriptjob" in q["sql"] and "GROUP BY" in q["sql"] for q in quiet.captured_queries)
    assert not Event.objects.exists()
    assert heard  # the other job is untouched


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="two sessions ending jobs at once need PostgreSQL")
@pytest.mark.parametrize("deferred", [False, True], ids=["appended-at-once", "appended-at-the-end"])
def test_two_last_jobs_ending_at_once_tell_the_case_exactly_once(
    flushable_append_only, caller, site, settings, deferred
):
    """Also with the history appended at the end of each transaction, as a result does
    (history.deferred): the case's check takes the history's lock itself."""
    import contextlib
    import threading

    from django.db import close_old_connections, transaction

    from rmm.history import services as history

    settings.RMM_PSA_WEBHOOK_URL = "http://127.0.0.1:9/unused"
    settings.RMM_PSA_WEBHOOK_SECRET = PsaReceiver.secret
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    agents = [make_agent(site, f"db-{n}")[0] for n in range(2)]
    task = approved_authority(site, psa.user)
    script = approved_script(tech.user, boss.user)
    jobs = [
        scripting.create_script_job(psa.user, script_id=script.pk, asset_id=a.asset_id, psa_task_id=task.pk)
        for a in agents
    ]
    from rmm.outbox import services as outbox

    outbox.psa_endpoint()  # made once beforehand: its upsert would serialise the two by itself
    first_ended, second_ended = threading.Event(), threading.Event()
    errors = []

    def first():
        """Ends its job, then keeps its transaction open while the second tries to end the other."""
        try:
            with transaction.atomic(), history.deferred() if deferred else contextlib.nullcontext():
                engine.transition_job(jobs[0], "aborted", boss.user, reason="at once")
                first_ended.set()
                second_ended.wait(2)  # the second waits for the history's lock meanwhile
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            close_old_connections()

    def second():
        try:
            first_ended.wait(10)
            with transaction.atomic(), history.deferred() if deferred else contextlib.nullcontext():
                engine.transition_job(jobs[1], "aborted", boss.user, reason="at once")
            second_ended.set()
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert errors == []
    assert Event.objects.filter(type="case.may_close").count() == 1
    assert Event.objects.filter(type="job.finished").count() == 2


def test_an_agent_unseen_goes_offline_and_online_again_each_told_once(
    world, receiver, settings, django_capture_on_commit_callbacks
):
    settings.RMM_AGENT_OFFLINE_SECONDS = 150
    now = timezone.now()
    quiet, lively = world.agents
    Agent.objects.filter(pk=quiet.pk).update(last_seen_at=now - timedelta(seconds=151))
    Agent.objects.filter(pk=lively.pk).update(last_seen_at=now - timedelta(seconds=100))

    with django_capture_on_commit_callbacks(execute=True):
        assert inventory.mark_presence(now) == 1
    [offline] = told(receiver, "agent.offline")
    assert offline["agent_id"] == str(quiet.pk) and offline["hostname"] == "web-00"
    assert offline["asset_id"] == str(quiet.asset_id)
    assert Agent.objects.get(pk=quiet.pk).offline_since == now
    with django_capture_on_commit_callbacks(execute=True):
        assert inventory.mark_presence(now + timedelta(seconds=30)) == 0  # told once, not every sweep

    # It heartbeats again; the next sweep tells the PSA it is back.
    later = now + timedelta(seconds=60)
    Agent.objects.filter(pk__in=[quiet.pk, lively.pk]).update(last_seen_at=later)
    with django_capture_on_commit_callbacks(execute=True):
        assert engine.sweep(later) >= 1  # the engine's minute sweep runs it
    [online] = told(receiver, "agent.online")
    assert online["agent_id"] == str(quiet.pk)
    assert Agent.objects.get(pk=quiet.pk).offline_since is None
    assert [item["agent_id"] for item in told(receiver, "agent.offline")] == [str(quiet.pk)]


def test_revoked_and_never_seen_agents_are_not_reported(world, receiver, settings, django_capture_on_commit_callbacks):
    settings.RMM_AGENT_OFFLINE_SECONDS = 150
    revoked, never = world.agents
    long_ago = timezone.now() - timedelta(days=1)
    Agent.objects.filter(pk=revoked.pk).update(last_seen_at=long_ago, revoked_at=long_ago)
    Agent.objects.filter(pk=never.pk).update(last_seen_at=None)
    with django_capture_on_commit_callbacks(execute=True):
        assert inventory.mark_presence(timezone.now()) == 0
    assert told(receiver, "agent.offline") == []


def test_a_job_ending_while_others_of_its_case_run_counts_nothing(world, receiver):
    """Until the case's last job ends, each job's end asks only whether one is still unfinished
    (an EXISTS that stops at the first), not the counts of every job under the case."""
    first, second = world.job(world.agents[0]), world.job(world.agents[1])
    with CaptureQueriesContext(connection) as seen:
        end(first, world)
    grouped = [q["sql"] for q in seen.captured_queries if "scripting_scriptjob" in q["sql"] and "GROUP BY" in q["sql"]]
    assert grouped == []
    assert second.pk and told(receiver, "case.may_close") == []
