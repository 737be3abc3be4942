"""A batch's later waves are signed for seconds after the batch committed: a kill switch engaged
in that time must stop them however the two interleave. Real threads, real connections."""

import threading
import time

import pytest
from django.db import connection

from rmm.engine.models import Instruction
from rmm.engine.services import issuing, kill_switches
from scripting.models import ScriptJob
from tests.helpers import approved_authority, approved_script, make_agent


@pytest.fixture
def world(caller, site, flushable_append_only):
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    agents = [make_agent(site, f"r{n:02d}") for n in range(12)]
    return {
        "psa": psa,
        "root": caller("root", "admin").user,
        "task": approved_authority(site, psa.user),
        "script": approved_script(tech.user, boss.user),
        "assets": [str(agent.asset_id) for agent, _ in agents],
    }


def batch(w, settings) -> dict:
    settings.RMM_WAVE_SIZE = 5
    settings.RMM_TASKS_SYNC = True  # the later waves' task runs as the batch commits
    body = {"script": str(w["script"].pk), "psa_task_id": str(w["task"].pk), "assets": w["assets"]}
    r = w["psa"].post("/api/v1/script-jobs/batch/", body, format="json")
    assert r.status_code == 201, r.content
    return r.json()


def engage_elsewhere(w, site) -> threading.Thread:
    """Engage a site switch from another thread, on its own database connection."""

    def engage():
        try:
            kill_switches.engage(w["root"], scope="site", target=site.name, reason="incident")
        finally:
            connection.close()

    thread = threading.Thread(target=engage)
    thread.start()
    return thread


def waiting_for_an_advisory_lock(timeout: float = 10.0) -> bool:
    """Whether another session comes to wait for an advisory lock (PostgreSQL's view of locks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            if cursor.fetchone()[0]:
                return True
        time.sleep(0.05)
    return False


def later_waves_all_stopped(body) -> None:
    """No instruction of the batch may run: each is aborted, or was never issued and its job is."""
    ids = [job["id"] for job in body["jobs"]]
    assert set(Instruction.objects.filter(job_id__in=ids).values_list("status", flat=True)) == {"aborted"}
    assert set(ScriptJob.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"aborted"}


@pytest.mark.django_db(transaction=True)
def test_a_switch_engaged_while_the_later_waves_are_signed_stops_them(world, site, settings, monkeypatch):
    """The switch commits, and its scan of queued work finds no later wave yet, while the task
    signs them: what the task stores must still stop (the reverted version checked, then signed)."""
    sign = issuing._sign

    def sign_then_engage(*args, **kwargs):
        rows = sign(*args, **kwargs)
        if not connection.in_atomic_block:  # the task's signing, outside its transaction
            engage_elsewhere(world, site).join()
        return rows

    monkeypatch.setattr(issuing, "_sign", sign_then_engage)
    later_waves_all_stopped(batch(world, settings))


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="two transactions at once: SQLite serialises them at BEGIN IMMEDIATE, and its in-memory test "
    "database refuses a second writer instead of waiting; the SQLite run covers the other order above",
)
def test_a_switch_engaged_while_the_later_waves_are_stored_waits_and_then_stops_them(
    world, site, settings, monkeypatch
):
    """The switch's transaction waits for the history's lock that the task holds; its scan then
    finds the instructions the task committed."""
    store, calls, threads = issuing._store, [], []

    def store_while_engaging(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the later waves, under the history's lock
            threads.append(engage_elsewhere(world, site))
            assert waiting_for_an_advisory_lock(), "the engage should wait for the lock the task holds"
        return store(*args, **kwargs)

    monkeypatch.setattr(issuing, "_store", store_while_engaging)
    body = batch(world, settings)
    threads[0].join()
    later_waves_all_stopped(body)
