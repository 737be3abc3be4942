"""Work is checked and queued under one lock: a kill switch engaged, or authority withdrawn, after
a job's first checks but before the transaction that queues it, stops it all the same. Creating
a job or a batch and approving a job check again inside that transaction, under the history's lock
that a batch's later waves take (rmm.history.services.lock): whatever committed before is seen,
whatever commits after finds the queued instructions when it stops work."""

import contextlib
import threading
import uuid

import pytest
from django.db import connection

from rmm.authority import services as authority
from rmm.core.errors import Forbidden, InvalidInput, ServiceError
from rmm.engine.models import Instruction
from rmm.engine.services import kill_switches
from rmm.history.models import HistoryEvent
from scripting import services as scripting
from scripting.models import ScriptJob
from tests.helpers import approved_authority, approved_script, make_agent


@contextlib.contextmanager
def just_before(sql_start: str, action):
    """Run ``action`` once, just before the first statement that starts with ``sql_start``
    (the transaction that queues: its SAVEPOINT inside a test's transaction; on PostgreSQL, its
    request for the history's lock). The service's checks made before it have passed by then."""
    fired = []

    def wrapper(execute, sql, params, many, context):
        if not fired and sql.lstrip().upper().startswith(sql_start.upper()):
            fired.append(sql)
            action()
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        yield fired
    assert fired, f"no statement began with {sql_start!r}"


@pytest.fixture
def world(caller, site):
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    agents = [make_agent(site, f"ctq-{n}")[0] for n in range(3)]
    return {
        "psa": psa.user,
        "boss": boss.user,
        "root": caller("root", "admin").user,
        "task": approved_authority(site, psa.user),
        "script": approved_script(tech.user, boss.user),
        "gated": approved_script(tech.user, boss.user, name="gated", requires_approval=True),
        "assets": [agent.asset_id for agent in agents],
    }


def engage(w, site):
    kill_switches.engage(w["root"], scope="site", target=site.name, reason="incident")


def withdraw(w, site):
    task = w["task"]
    authority.upsert_task(w["psa"], task.pk, case_id=task.case_id, title=task.title, status="closed")


CHANGES = {
    "a kill switch engaged": (engage, Forbidden, "kill switch engaged on site alpha"),
    "authority withdrawn": (withdraw, InvalidInput, "no authority: PSA task is closed, not approved"),
}


def create_one(w):
    return scripting.create_script_job(
        w["psa"], script_id=w["script"].pk, asset_id=w["assets"][0], psa_task_id=w["task"].pk
    )


def create_batch(w):
    return scripting.create_script_jobs(
        w["psa"], script_id=w["script"].pk, psa_task_id=w["task"].pk, asset_ids=w["assets"]
    )


def nothing_queued(action: str, reason: str) -> None:
    assert not Instruction.objects.exists()
    refusal = HistoryEvent.objects.filter(action=f"refused.{action}").order_by("-sequence").first()
    assert refusal is not None and refusal.payload["reason"] == reason


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("create", [create_one, create_batch], ids=["one job", "a batch"])
def test_a_change_after_the_checks_stops_a_new_job(world, site, change, create):
    make_change, error, reason = CHANGES[change]
    with just_before("SAVEPOINT", lambda: make_change(world, site)), pytest.raises(error):
        create(world)
    assert not ScriptJob.objects.exists()
    nothing_queued("script_job.create", reason)


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_change_after_the_checks_stops_an_approval(world, site, change):
    job = scripting.create_script_job(
        world["psa"], script_id=world["gated"].pk, asset_id=world["assets"][0], psa_task_id=world["task"].pk
    )
    assert job.status == "awaiting_approval"
    job = ScriptJob.objects.select_related("psa_task__case", "asset", "script").get(pk=job.pk)
    make_change, _, reason = CHANGES[change]
    with just_before("SAVEPOINT", lambda: make_change(world, site)), pytest.raises(ServiceError):
        scripting.approve_script_job(job, world["boss"])
    job.refresh_from_db()
    assert job.status == "awaiting_approval"
    nothing_queued("job.approve", reason)


def test_without_a_change_the_work_is_queued_as_before(world):
    create_one(world)
    create_batch(world)
    assert Instruction.objects.filter(status="queued").count() == 4


# --- two connections at once (PostgreSQL) ----------------------------------------------------

pg_only = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="a second connection that commits while the service's transaction is open: SQLite's in-memory "
    "test database refuses a second writer instead of waiting; the tests above cover SQLite",
)


def elsewhere(action):
    """Run ``action`` to its commit on another thread, with its own database connection."""

    def run():
        try:
            action()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()


@pytest.fixture
def committed_world(caller, site, flushable_append_only):
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    agents = [make_agent(site, f"pg-{n}")[0] for n in range(3)]
    return {
        "psa": psa.user,
        "boss": boss.user,
        "root": caller("root", "admin").user,
        "task": approved_authority(site, psa.user),
        "script": approved_script(tech.user, boss.user, name=f"s-{uuid.uuid4().hex[:6]}"),
        "assets": [agent.asset_id for agent in agents],
    }


@pg_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("create", [create_one, create_batch], ids=["one job", "a batch"])
def test_a_change_committed_by_another_worker_inside_the_queueing_transaction_stops_the_work(
    committed_world, site, change, create
):
    """Another worker engages a switch (or the PSA withdraws the task) and commits, and its scan
    of queued work finds nothing, while the service's transaction is open but has not yet taken
    the history's lock: the check under that lock sees the change."""
    make_change, error, reason = CHANGES[change]
    meanwhile = lambda: elsewhere(lambda: make_change(committed_world, site))  # noqa: E731
    with just_before("SELECT pg_advisory_xact_lock", meanwhile), pytest.raises(error):
        create(committed_world)
    assert not ScriptJob.objects.exists()
    nothing_queued("script_job.create", reason)
