"""Batches with a plan: a canary ring, then rings released as the one before finishes; a failure
threshold that halts the batch until an approver who did not request it resumes it; the kill
switch stops a batch; progress per ring in a constant number of queries."""

import hashlib
import secrets
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from rmm.engine import services as engine
from rmm.engine.models import Instruction
from rmm.history.models import HistoryEvent
from rmm.inventory.models import Agent, Asset
from rmm.outbox.models import Event
from rmm_agent.results import make_result
from scripting.models import ScriptJob
from tests.helpers import approved_authority, approved_script, make_agent, otp_login


@pytest.fixture
def world(caller, site, settings):
    settings.RMM_TASKS_SYNC = True
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    agents = [make_agent(site, f"r{n:02d}")[0] for n in range(12)]
    return {
        "psa": psa,
        "tech": tech,
        "boss": boss,
        "task": approved_authority(site, psa.user),
        "script": approved_script(tech.user, boss.user),
        "agents": {agent.asset_id: agent for agent in agents},
        "assets": [str(agent.asset_id) for agent in agents],
    }


def post_batch(w, plan=None, assets=None):
    body = {"script": str(w["script"].pk), "psa_task_id": str(w["task"].pk), "assets": assets or w["assets"]}
    if plan is not None:
        body["plan"] = plan
    return w["psa"].post("/api/v1/script-jobs/batch/", body, format="json")


def start(w, capture, plan, assets=None) -> dict:
    with capture(execute=True):
        r = post_batch(w, plan, assets)
    assert r.status_code == 201, r.content
    return r.json()


def progress(w, batch_id, who="psa") -> dict:
    r = w[who].get(f"/api/v1/batches/{batch_id}/")
    assert r.status_code == 200, r.content
    return r.json()


def run_ring(agents, capture, exit_code=0, limit=None) -> int:
    """One round: the agents lease what is released for them (``limit`` instructions at most) and
    report it with ``exit_code``; the tasks the results enqueue (a ring released) run. Returns
    how many results were sent."""
    leased = []
    for agent in agents:
        if limit is not None and len(leased) >= limit:
            break
        leased += [(agent, inst) for inst in engine.lease(agent, 1, timezone.now())]
    for agent, inst in leased:
        with capture(execute=True):
            status, answer = engine.ingest_result(
                agent, make_result(str(inst.pk), "completed", exit_code=exit_code, stdout="x")
            )
        assert status == 201, answer
    return len(leased)


def issued(batch_id) -> int:
    jobs = ScriptJob.objects.filter(batch_id=batch_id).values("pk")
    return Instruction.objects.filter(job_id__in=jobs).count()


@pytest.mark.parametrize(
    ("plan", "field"),
    [
        ({"canary": 0}, "plan.canary"),
        ({"canary": "two"}, "plan.canary"),
        ({"ring_size": 2, "ring_percent": 10}, "plan.ring_percent"),
        ({"ring_percent": 150}, "plan.ring_percent"),
        ({"growth": 0.5}, "plan.growth"),
        ({"interval_seconds": -1}, "plan.interval_seconds"),
        ({"failure_threshold_percent": 101}, "plan.failure_threshold_percent"),
        ({"waves": 3}, "plan.waves"),
        ([1, 2], "plan"),
    ],
)
def test_a_bad_plan_is_refused_with_its_field_and_writes_nothing(world, plan, field):
    r = post_batch(world, plan)
    assert r.status_code == 400 and field in r.json(), r.content
    assert not ScriptJob.objects.exists() and not Instruction.objects.exists()


def test_the_canary_goes_first_and_each_ring_follows_the_one_before_once_it_finished(
    world, django_capture_on_commit_callbacks
):
    plan = {"canary": 2, "ring_size": 3, "growth": 2, "interval_seconds": 0}
    body = start(world, django_capture_on_commit_callbacks, plan)
    batch = body["batch"]
    seen = progress(world, batch)
    assert seen["status"] == "running" and seen["halt_reason"] == ""
    assert [ring["size"] for ring in seen["rings"]] == [2, 3, 6, 1]
    assert seen["rings"][0] == {
        "index": 0,
        "size": 2,
        "pending": 2,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "aborted": 0,
    }
    assert issued(batch) == 2  # the canary only
    agents = list(world["agents"].values())
    assert run_ring(agents, django_capture_on_commit_callbacks, limit=1) == 1
    assert issued(batch) == 2  # one canary job still running: the next ring waits
    assert run_ring(agents, django_capture_on_commit_callbacks) == 1
    assert issued(batch) == 5  # released by the last canary result, issued by the task
    run_ring(agents, django_capture_on_commit_callbacks)
    assert issued(batch) == 11
    run_ring(agents, django_capture_on_commit_callbacks)
    run_ring(agents, django_capture_on_commit_callbacks)
    seen = progress(world, batch)
    assert seen["status"] == "completed"
    assert [ring["succeeded"] for ring in seen["rings"]] == [2, 3, 6, 1]
    released = HistoryEvent.objects.filter(action="batch.ring_released", subject_id=batch).order_by("sequence")
    assert [event.payload["ring"] for event in released] == [1, 2, 3]
    assert {event.actor for event in released} == {"user:psa"}  # in the requester's name


def test_a_ring_waits_for_its_interval_and_the_sweep_releases_it(world, django_capture_on_commit_callbacks):
    body = start(world, django_capture_on_commit_callbacks, {"canary": 1, "ring_size": 5, "interval_seconds": 120})
    run_ring(world["agents"].values(), django_capture_on_commit_callbacks)
    assert issued(body["batch"]) == 1  # finished, but not two minutes since the canary's release
    with django_capture_on_commit_callbacks(execute=True):
        engine.sweep(timezone.now() + timedelta(seconds=60))
    assert issued(body["batch"]) == 1
    with django_capture_on_commit_callbacks(execute=True):
        engine.sweep(timezone.now() + timedelta(seconds=121))
    assert issued(body["batch"]) == 6


def test_a_failing_canary_halts_the_batch_tells_the_psa_and_releases_nothing_more(
    world, settings, django_capture_on_commit_callbacks
):
    settings.RMM_PSA_WEBHOOK_URL = "http://127.0.0.1:9/unused"
    plan = {"canary": 2, "ring_size": 5, "interval_seconds": 0, "failure_threshold_percent": 10}
    body = start(world, django_capture_on_commit_callbacks, plan)
    agents = list(world["agents"].values())
    assert run_ring(agents, django_capture_on_commit_callbacks, exit_code=1, limit=1) == 1
    seen = progress(world, body["batch"])
    assert seen["status"] == "halted"
    assert seen["halt_reason"] == "1 of 1 finished jobs failed, past the threshold of 10 %"
    halted = HistoryEvent.objects.get(action="batch.halted", subject_id=body["batch"])
    assert halted.payload["reason"] == seen["halt_reason"]
    told = Event.objects.get(type="batch.halted")
    assert told.subject_id == body["batch"] and told.data["reason"] == seen["halt_reason"]
    # The canary's other job runs to its end; nothing more is released, by results or the sweep.
    assert run_ring(agents, django_capture_on_commit_callbacks) == 1
    with django_capture_on_commit_callbacks(execute=True):
        engine.sweep(timezone.now() + timedelta(minutes=11))
    assert issued(body["batch"]) == 2
    seen = progress(world, body["batch"])
    assert seen["status"] == "halted" and seen["rings"][0]["failed"] == 1 and seen["rings"][0]["succeeded"] == 1
    assert seen["rings"][1]["pending"] == 5


def test_only_an_approver_who_did_not_request_it_resumes_a_halted_batch(
    world, caller, django_capture_on_commit_callbacks
):
    plan = {"canary": 1, "ring_size": 5, "interval_seconds": 0, "failure_threshold_percent": 50}
    body = start(world, django_capture_on_commit_callbacks, plan)
    resume = f"/api/v1/batches/{body['batch']}/resume/"
    assert world["boss"].post(resume).status_code == 409  # running, not halted
    run_ring(world["agents"].values(), django_capture_on_commit_callbacks, exit_code=1)
    assert world["tech"].post(resume).status_code == 403
    requester = caller("lead", "admin")  # may approve, but asked for this batch itself
    requester_batch = start(
        {**world, "psa": requester, "task": approved_authority(world["task"].case.site, requester.user)},
        django_capture_on_commit_callbacks,
        plan,
        world["assets"][:2],
    )
    run_ring(world["agents"].values(), django_capture_on_commit_callbacks, exit_code=1)
    r = requester.post(f"/api/v1/batches/{requester_batch['batch']}/resume/")
    assert r.status_code == 403, r.content
    refusals = HistoryEvent.objects.filter(action="refused.batch.resume")
    assert {event.payload["reason"] for event in refusals} == {"role may not approve", "self-approval"}
    with django_capture_on_commit_callbacks(execute=True):
        r = world["boss"].post(resume)
    assert r.status_code == 200 and r.json()["status"] == "running", r.content
    assert issued(body["batch"]) == 6  # the ring that was due is released at once
    assert HistoryEvent.objects.filter(action="batch.resumed", actor="user:boss").count() == 1


def test_a_batch_of_a_site_the_caller_may_not_see_is_not_found_in_the_api_or_the_console(
    world, caller, other_site, django_capture_on_commit_callbacks
):
    body = start(world, django_capture_on_commit_callbacks, {"canary": 1})
    stranger = caller("stranger", "approver", sites=[other_site])
    assert stranger.get(f"/api/v1/batches/{body['batch']}/").status_code == 404
    assert stranger.post(f"/api/v1/batches/{body['batch']}/resume/").status_code == 404
    assert otp_login(Client(), stranger.user).get(f"/console/batches/{body['batch']}/").status_code == 404
    assert otp_login(Client(), world["tech"].user).get(f"/console/batches/{body['batch']}/").status_code == 200


def test_a_kill_switch_over_the_batch_stops_it(world, caller, django_capture_on_commit_callbacks):
    body = start(world, django_capture_on_commit_callbacks, {"canary": 2, "ring_size": 5, "interval_seconds": 0})
    root = caller("root", "admin")
    with django_capture_on_commit_callbacks(execute=True):
        r = root.post("/api/v1/kill-switches/", {"scope": "site", "target": "alpha", "reason": "stop"}, format="json")
    assert r.status_code == 201
    seen = progress(world, body["batch"])
    assert seen["status"] == "aborted" and seen["halt_reason"] == "kill switch engaged on site alpha: stop"
    assert [ring["aborted"] for ring in seen["rings"]] == [2, 5, 5]
    assert HistoryEvent.objects.filter(action="batch.aborted", subject_id=body["batch"], actor="user:root").exists()
    with django_capture_on_commit_callbacks(execute=True):
        engine.sweep(timezone.now() + timedelta(minutes=11))
    assert issued(body["batch"]) == 2  # the canary's, aborted by the switch; nothing more


def test_a_batch_awaiting_approval_releases_its_canary_once_every_job_is_decided(
    world, caller, site, django_capture_on_commit_callbacks
):
    tech, boss = world["tech"], world["boss"]
    script = approved_script(tech.user, boss.user, name="careful", requires_approval=True)
    body = start({**world, "script": script}, django_capture_on_commit_callbacks, {"canary": 1}, world["assets"][:3])
    assert progress(world, body["batch"])["status"] == "awaiting_approval"
    second = caller("boss2", "approver")
    jobs = [job["id"] for job in body["jobs"]]
    with django_capture_on_commit_callbacks(execute=True):
        assert boss.post(f"/api/v1/script-jobs/{jobs[0]}/approve/").status_code == 200
        assert second.post(f"/api/v1/script-jobs/{jobs[1]}/approve/").status_code == 200
    assert issued(body["batch"]) == 0 and progress(world, body["batch"])["status"] == "awaiting_approval"
    with django_capture_on_commit_callbacks(execute=True):
        assert boss.post(f"/api/v1/script-jobs/{jobs[2]}/reject/", {"reason": "not this one"}).status_code == 200
    assert progress(world, body["batch"])["status"] == "running"
    assert issued(body["batch"]) == 1  # the canary


def test_a_batch_without_a_plan_keeps_the_global_waves(world, settings, django_capture_on_commit_callbacks):
    settings.RMM_WAVE_SIZE = 5
    body = start(world, django_capture_on_commit_callbacks, None)
    seen = progress(world, body["batch"])
    assert seen["plan"] == {
        "canary": 5,
        "ring_size": 5,
        "growth": 1,
        "interval_seconds": settings.RMM_WAVE_INTERVAL_SECONDS,
        "failure_threshold_percent": 100,
    }
    assert [ring["size"] for ring in seen["rings"]] == [5, 5, 2]
    assert issued(body["batch"]) == 12  # signed ahead, released on the clock


def _fleet(site, count: int) -> list[Agent]:
    assets = [Asset(site=site, hostname=f"sim-{n:05d}", os="Linux", architecture="x86_64") for n in range(count)]
    Asset.objects.bulk_create(assets, batch_size=2000)
    agents = [Agent(asset=a, secret_hash=hashlib.sha256(secrets.token_bytes(8)).hexdigest()) for a in assets]
    Agent.objects.bulk_create(agents, batch_size=2000)
    return agents


def test_a_batch_of_ten_thousand_with_a_failing_canary_halts_before_its_second_ring_and_reads_in_constant_queries(
    world, site, django_capture_on_commit_callbacks
):
    agents = _fleet(site, 10_000)
    plan = {"canary": 10, "ring_percent": 10, "interval_seconds": 0, "failure_threshold_percent": 20}
    body = start(world, django_capture_on_commit_callbacks, plan, [str(agent.asset_id) for agent in agents])
    assert body["count"] == 10_000
    small = start(world, django_capture_on_commit_callbacks, {"canary": 1}, world["assets"][:2])
    console = otp_login(Client(), world["tech"].user)
    with CaptureQueriesContext(connection) as few:
        progress(world, small["batch"])
    with CaptureQueriesContext(connection) as few_page:
        assert console.get(f"/console/batches/{small['batch']}/").status_code == 200
    canary = [agent for agent in agents if Instruction.objects.filter(agent=agent).exists()]
    assert len(canary) == 10
    run_ring(canary[:3], django_capture_on_commit_callbacks, exit_code=1)  # past 20 % at the first
    run_ring(canary[3:], django_capture_on_commit_callbacks, exit_code=0)  # the rest run to their end
    with CaptureQueriesContext(connection) as many:
        seen = progress(world, body["batch"])
    assert len(many) == len(few)  # the same queries for 2 jobs as for 10,000
    with CaptureQueriesContext(connection) as many_page:
        page = console.get(f"/console/batches/{body['batch']}/")
    assert len(many_page) == len(few_page) and b"halted" in page.content
    assert seen["status"] == "halted"
    assert len(seen["rings"]) == 11 and seen["rings"][1]["size"] == 1000
    assert seen["rings"][0] == {
        "index": 0,
        "size": 10,
        "pending": 0,
        "running": 0,
        "succeeded": 7,
        "failed": 3,
        "aborted": 0,
    }
    assert sum(ring["pending"] for ring in seen["rings"][1:]) == 9990
    assert issued(body["batch"]) == 10  # the second ring was never released


def test_a_result_costs_the_same_queries_in_a_batch_of_three_as_in_one_of_twelve(
    world, django_capture_on_commit_callbacks
):
    plan = {"canary": 2, "ring_size": 5, "interval_seconds": 0}
    small = start(world, django_capture_on_commit_callbacks, plan, world["assets"][:3])
    large = start(world, django_capture_on_commit_callbacks, plan, world["assets"][3:])
    counts = []
    for body in (small, large):
        job = ScriptJob.objects.filter(batch_id=body["batch"], ring=0).first()
        agent = world["agents"][job.asset_id]
        (inst,) = engine.lease(agent, 1, timezone.now())
        with CaptureQueriesContext(connection) as queries:
            status, _ = engine.ingest_result(agent, make_result(str(inst.pk), "completed", exit_code=0, stdout="x"))
        assert status == 201
        counts.append(len(queries))
    assert counts[0] == counts[1]


def test_a_released_ring_whose_task_was_lost_is_issued_by_the_sweep(world, django_capture_on_commit_callbacks):
    body = start(world, django_capture_on_commit_callbacks, {"canary": 1, "ring_size": 5, "interval_seconds": 0})
    (agent,) = [world["agents"][job.asset_id] for job in ScriptJob.objects.filter(batch_id=body["batch"], ring=0)]
    (inst,) = engine.lease(agent, 1, timezone.now())
    with django_capture_on_commit_callbacks(execute=False):  # the ring's task is lost
        engine.ingest_result(agent, make_result(str(inst.pk), "completed", exit_code=0, stdout="x"))
    assert progress(world, body["batch"])["released_rings"] == 2 and issued(body["batch"]) == 1
    engine.sweep(timezone.now() + timedelta(minutes=1))  # only late, perhaps
    assert issued(body["batch"]) == 1
    engine.sweep(timezone.now() + timedelta(minutes=11))
    assert issued(body["batch"]) == 6
    vias = HistoryEvent.objects.filter(action="instruction.issued").values_list("payload__via", flat=True)
    assert sorted(v or "" for v in vias) == ["", *["sweep"] * 5]


def test_a_batch_a_kill_switch_aborted_is_not_resumed(world, caller, django_capture_on_commit_callbacks):
    plan = {"canary": 1, "ring_size": 5, "interval_seconds": 0, "failure_threshold_percent": 0}
    body = start(world, django_capture_on_commit_callbacks, plan)
    run_ring(world["agents"].values(), django_capture_on_commit_callbacks, exit_code=1)
    assert progress(world, body["batch"])["status"] == "halted"
    root = caller("root", "admin")
    r = root.post("/api/v1/kill-switches/", {"scope": "global", "reason": "stop"}, format="json")
    assert r.status_code == 201
    assert progress(world, body["batch"])["status"] == "aborted"
    assert world["boss"].post(f"/api/v1/batches/{body['batch']}/resume/").status_code == 409
    assert issued(body["batch"]) == 1
