"""The agent's hot path costs a constant number of queries, whatever the size of the fleet."""

import json

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from rmm.engine.models import Instruction
from rmm.inventory.models import AssetFacts
from rmm.keys import services as key_services
from rmm_agent.results import make_result
from scripting import services as scripting
from tests.helpers import approved_authority, approved_script, make_agent

# Upper bounds observed on SQLite and PostgreSQL (savepoints and advisory locks included; the
# leasing bound is with throttle ceilings on). Raise them only on purpose.
MAX_IDLE_HEARTBEAT = 3  # 2 idle: authenticate, check in (seen, facts hash, kill switch, work); +1 with running ids
MAX_LEASING_HEARTBEAT = 18
MAX_RESULT = 16  # its history appended at its end, in one append (history.deferred)


@pytest.fixture
def world(caller, site, settings):
    settings.RMM_HEARTBEAT_MIN_SPACING_SECONDS = 0  # these tests call back to back on purpose
    psa = caller("psa", "psa")
    tech = caller("tech", "technician")
    boss = caller("boss", "approver")
    task = approved_authority(site, psa.user)
    script = approved_script(tech.user, boss.user)
    return psa, task, script


def queue_one(psa, task, script, agent):
    return scripting.create_script_job(psa.user, script_id=script.pk, asset_id=agent.asset_id, psa_task_id=task.pk)


def measure(path, body, auth, expect):
    client = Client()
    raw = json.dumps(body)
    with CaptureQueriesContext(connection) as ctx:
        r = client.post(path, data=raw, content_type="application/json", HTTP_AUTHORIZATION=auth)
    assert r.status_code == expect, r.content
    return len(ctx.captured_queries), r.json(), [q["sql"] for q in ctx.captured_queries]


def result_body(instruction_id):
    return make_result(instruction_id, "completed", exit_code=0, stdout="hello\n")


def one_agents_round(site, psa, task, script, hostname):
    """Idle heartbeat, a heartbeat that leases one instruction, and its result: three query counts."""
    agent, auth = make_agent(site, hostname)
    keys = [agent.signing_key_id]  # as the real agent, every heartbeat names the keys it holds
    idle, answer, _ = measure("/api/v1/agent/heartbeat/", {"capacity": 4, "running": [], "key_ids": keys}, auth, 200)
    assert answer["instructions"] == []
    queue_one(psa, task, script, agent)
    leasing, answer, _ = measure("/api/v1/agent/heartbeat/", {"capacity": 4, "running": [], "key_ids": keys}, auth, 200)
    assert len(answer["instructions"]) == 1
    inst_id = json.loads(answer["instructions"][0]["payload"])["instruction_id"]
    running, answer, _ = measure(
        "/api/v1/agent/heartbeat/", {"capacity": 4, "running": [inst_id], "key_ids": keys}, auth, 200
    )
    assert answer["instructions"] == [] and answer["abort"] == []
    result, answer, _ = measure("/api/v1/agent/results/", result_body(inst_id), auth, 201)
    assert answer == {"status": "accepted"}
    return {"idle": idle, "leasing": leasing, "running": running, "result": result}


@pytest.mark.parametrize("ceilings", [False, True], ids=["no-ceilings", "site-and-total-ceilings"])
def test_hot_path_queries_do_not_grow_with_the_fleet(world, site, other_site, settings, ceilings):
    if ceilings:  # the throttles count running work inside the lease; still a constant number of queries
        settings.RMM_MAX_RUNNING_PER_SITE = 1000
        settings.RMM_MAX_RUNNING_TOTAL = 1000
    psa, task, script = world
    # Warm any per-process caches (content types, signing key) so both rounds start equal.
    one_agents_round(site, psa, task, script, "warm-up")

    alone = one_agents_round(site, psa, task, script, "first")

    # Fifty more agents, each with queued work of its own, in both sites.
    other_task = approved_authority(other_site, psa.user)
    for n in range(50):
        where, authority = (site, task) if n % 2 else (other_site, other_task)
        agent, _ = make_agent(where, f"fleet-{n:02d}")
        queue_one(psa, authority, script, agent)
    assert Instruction.objects.filter(status="queued").count() == 50

    crowded = one_agents_round(site, psa, task, script, "last")

    assert crowded == alone
    assert alone["idle"] <= MAX_IDLE_HEARTBEAT, alone
    assert alone["running"] <= MAX_IDLE_HEARTBEAT, alone
    assert alone["leasing"] <= MAX_LEASING_HEARTBEAT, alone
    assert alone["result"] <= MAX_RESULT, alone
    # Nobody else's work was touched by our agent's calls.
    assert Instruction.objects.filter(status="queued").count() == 50


def test_leasing_several_costs_the_same_as_leasing_one(world, site, settings):
    """Capacity 4 with 4 queued instructions: the lease is batched, not one round trip per row."""
    settings.RMM_MAX_RUNNING_PER_ASSET = 4
    psa, task, script = world
    one_agents_round(site, psa, task, script, "warm-up")
    counts = {}
    for n in (1, 4):
        agent, auth = make_agent(site, f"batch-{n}")
        for _ in range(n):
            queue_one(psa, task, script, agent)
        counts[n], answer, _ = measure("/api/v1/agent/heartbeat/", {"capacity": 4}, auth, 200)
        assert len(answer["instructions"]) == n
    assert counts[4] == counts[1]


def test_a_heartbeat_with_unchanged_facts_hash_stays_cheap(world, site):
    agent, auth = make_agent(site, "hash-01")
    baseline, _, _ = measure("/api/v1/agent/heartbeat/", {"capacity": 4}, auth, 200)
    stored = agent.asset.facts.facts_hash
    with_hash, answer, _ = measure("/api/v1/agent/heartbeat/", {"capacity": 4, "facts_hash": stored}, auth, 200)
    assert answer["facts_required"] is False
    assert with_hash == baseline  # the stored hash comes with the check-in query
    _, answer, _ = measure("/api/v1/agent/heartbeat/", {"capacity": 4, "facts_hash": "0" * 64}, auth, 200)
    assert answer["facts_required"] is True


def test_a_held_heartbeat_costs_what_an_idle_one_does_and_a_wake_up_a_constant_more(world, site, settings):
    """Held, a heartbeat makes its queries up front and none while it waits; woken, it looks again
    with a constant number, whatever the fleet."""
    settings.RMM_HEARTBEAT_INTERVAL = 1
    psa, task, script = world
    agent, auth = make_agent(site, "waiting")
    idle, _, _ = measure("/api/v1/agent/heartbeat/", {"capacity": 4}, auth, 200)
    held, answer, _ = measure("/api/v1/agent/heartbeat/", {"capacity": 4, "wait": 1}, auth, 200)
    assert answer["instructions"] == []
    assert held == idle <= MAX_IDLE_HEARTBEAT
    for n in range(20):
        other, _ = make_agent(site, f"busy-{n:02d}")
        queue_one(psa, task, script, other)
    crowded, _, _ = measure("/api/v1/agent/heartbeat/", {"capacity": 4, "wait": 1}, auth, 200)
    assert crowded == held


def test_looking_again_when_woken_costs_the_same_whatever_the_fleet(world, site):
    from rmm.engine.agent_views import _Held, _look_again

    psa, task, script = world
    counts = []
    for hostname, others in (("woken-1", 0), ("woken-2", 20)):
        for n in range(others):
            other, _ = make_agent(site, f"{hostname}-busy-{n:02d}")
            queue_one(psa, task, script, other)
        agent, _ = make_agent(site, hostname)
        with CaptureQueriesContext(connection) as nothing:
            assert _look_again(_Held(agent, [], 4, {})) is None
        queue_one(psa, task, script, agent)
        with CaptureQueriesContext(connection) as leasing:
            assert len(_look_again(_Held(agent, [], 4, {}))["instructions"]) == 1
        counts.append((len(nothing), len(leasing)))
    assert counts[0] == counts[1]
    assert counts[0][0] == 1 and counts[0][1] <= MAX_LEASING_HEARTBEAT


def test_the_key_set_costs_no_query_per_heartbeat_and_a_rotation_reaches_the_worker(world, site):
    """The key set is cached per process and checked against the registry's version, which the
    check-in statement returns: a heartbeat that names its keys costs no more than one that does
    not. A rotation made elsewhere (this process's cache is not told) reaches the next heartbeat,
    at the cost of loading the key set once."""
    agent, auth = make_agent(site, "keys")
    path, held = "/api/v1/agent/heartbeat/", [agent.signing_key_id]
    plain, _, _ = measure(path, {"capacity": 4}, auth, 200)
    with_keys, answer, _ = measure(path, {"capacity": 4, "key_ids": held}, auth, 200)
    assert with_keys == plain <= MAX_IDLE_HEARTBEAT
    assert "signing_keys" not in answer
    new = key_services.rotate("instructions", "user:tester")
    first, answer, _ = measure(path, {"capacity": 4, "key_ids": held}, auth, 200)
    [statement] = answer["signing_keys"]["rotations"]
    assert json.loads(statement["payload"])["key_id"] == new.key_id
    assert first <= plain + 1  # the key set, loaded once
    again, answer, _ = measure(path, {"capacity": 4, "key_ids": held}, auth, 200)
    assert again == plain and answer["signing_keys"]["rotations"] == [statement]


def test_a_result_appends_its_history_once_at_its_end(world, site):
    """The instruction's, the job's and the evidence's events in one append: the chain's head read
    once, after every other write of the result, so the history's lock is held only to the commit."""
    psa, task, script = world
    agent, auth = make_agent(site, "once")
    queue_one(psa, task, script, agent)
    answer = Client().post(
        "/api/v1/agent/heartbeat/",
        data=json.dumps({"capacity": 4, "running": []}),
        content_type="application/json",
        HTTP_AUTHORIZATION=auth,
    )
    inst_id = json.loads(answer.json()["instructions"][0]["payload"])["instruction_id"]
    _, _, queries = measure("/api/v1/agent/results/", result_body(inst_id), auth, 201)
    heads = [n for n, sql in enumerate(queries) if "history_historyevent" in sql and "ORDER BY" in sql]
    assert len(heads) == 1, heads
    writes = [
        sql
        for sql in queries[heads[0] :]
        if sql.lstrip().upper().startswith(("INSERT", "UPDATE")) and "history_historyevent" not in sql
    ]
    assert len(writes) == 1 and "evidence_rmmevidence" in writes[0]  # the record that names its event


def test_a_batch_job_s_result_counts_its_batch_after_its_evidence(world, site, monkeypatch):
    """The batch is counted under the history's lock; a result does that at its end, after its
    evidence is written, so the lock is not held while the blob is stored."""
    from rmm.core import blobs
    from rmm.engine.services import batches

    order = []
    for module, name in ((blobs, "store"), (batches, "jobs_finished")):
        real = getattr(module, name)

        def recorded(*args, _real=real, _name=name, **kwargs):
            order.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, recorded)
    psa, task, script = world
    agent, auth = make_agent(site, "batched")
    scripting.create_script_jobs(psa.user, script_id=script.pk, psa_task_id=task.pk, asset_ids=[agent.asset_id])
    answer = Client().post(
        "/api/v1/agent/heartbeat/",
        data=json.dumps({"capacity": 4, "running": []}),
        content_type="application/json",
        HTTP_AUTHORIZATION=auth,
    )
    inst_id = json.loads(answer.json()["instructions"][0]["payload"])["instruction_id"]
    order.clear()
    measure("/api/v1/agent/results/", result_body(inst_id), auth, 201)
    assert order == ["store", "jobs_finished"]


def test_fact_namespaces_cost_the_same_however_many_changed(world, site):
    """Hashes only: what an idle heartbeat costs (the stored hashes come with the check-in). One
    changed namespace, two, or all of them (a test-registered one among them, one as a patch):
    the same count, with the asset's summary facts changed (recorded in the history) each time."""
    from rmm.inventory import namespaces
    from rmm_agent.protocol import facts_hash

    namespaces.register("test_probe", lambda body: body, lambda body: {})
    try:
        agent, auth = make_agent(site, "namespaced")
        current = {
            "os": {"os": "Linux", "kernel": "6.0"},
            "hardware": {"architecture": "x86_64", "cpu_count": 1},
            "network": {"hostname": "namespaced", "addresses": ["10.0.0.1"]},
            "agent": {"agent_version": "0.2.0"},
            "test_probe": {"n": 0},
        }
        BUMP = {  # none of them the asset's hostname, OS or architecture (one query more when they change)
            "os": lambda body: {"kernel": body["kernel"] + "+"},
            "hardware": lambda body: {"cpu_count": body["cpu_count"] + 1},
            "network": lambda body: {"addresses": [*body["addresses"], f"10.0.1.{len(body['addresses'])}"]},
            "agent": lambda body: {"agent_version": body["agent_version"] + "+"},
            "test_probe": lambda body: {"n": body["n"] + 1},
        }

        def heartbeat(changing: set, whole: bool = False) -> int:
            for name in changing:  # a value the asset's summary facts show (test_probe's: none)
                current[name] = {**current[name], **BUMP[name](current[name])}
            report = {
                name: {"hash": facts_hash(body), **({"body": body} if name in changing else {})}
                for name, body in current.items()
            }
            if "network" in changing and not whole:  # one of them as a patch against the stored body
                report["network"] = {"hash": facts_hash(current["network"]), "patch": current["network"]}
            count, answer, _ = measure("/api/v1/agent/heartbeat/", {"capacity": 4, "namespaces": report}, auth, 200)
            assert answer["facts_wanted"] == []
            return count

        idle, _, _ = measure("/api/v1/agent/heartbeat/", {"capacity": 4}, auth, 200)
        every = set(current)
        heartbeat(every, whole=True)  # the first report, warming the path
        counts = {0: heartbeat(set()), 1: heartbeat({"network"}), 2: heartbeat({"os", "test_probe"})}
        counts[len(every)] = heartbeat(every)
        assert counts[0] == idle <= MAX_IDLE_HEARTBEAT, counts
        assert counts[1] == counts[2] == counts[len(every)], counts
        assert AssetFacts.objects.get(asset_id=agent.asset_id).namespaces == current
    finally:
        namespaces.unregister("test_probe")
