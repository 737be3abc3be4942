"""One script across many assets: POST /api/v1/script-jobs/batch/ makes one job per asset, under
the same rules as a single job, checked once, at a cost that does not grow with the batch."""

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from rmm.engine.models import Instruction
from rmm.history.models import HistoryEvent
from scripting.models import ScriptJob
from tests.helpers import approved_authority, approved_script, make_agent


@pytest.fixture
def world(caller, site, other_site):
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    world = {
        "psa": psa,
        "task": approved_authority(site, psa.user),
        "script": approved_script(tech.user, boss.user),
        "agents": [make_agent(site, f"b{n:02d}") for n in range(12)],
        "elsewhere": str(make_agent(other_site, "far")[0].asset_id),
    }
    world["assets"] = [str(agent.asset_id) for agent, _ in world["agents"]]
    return world


def batch(w, **body):
    body = {"script": str(w["script"].pk), "psa_task_id": str(w["task"].pk), **body}
    return w["psa"].post("/api/v1/script-jobs/batch/", body, format="json")


def test_one_queued_job_and_one_signed_instruction_per_asset_released_in_waves(world, settings):
    settings.RMM_WAVE_SIZE = 5
    r = batch(world, assets=world["assets"])
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["count"] == 12 and body["status"] == "queued"
    assert sorted(job["asset"] for job in body["jobs"]) == sorted(world["assets"])
    jobs = ScriptJob.objects.filter(pk__in=[job["id"] for job in body["jobs"]])
    assert jobs.count() == 12 and set(jobs.values_list("status", flat=True)) == {"queued"}
    insts = list(Instruction.objects.filter(job_id__in=[job["id"] for job in body["jobs"]]).order_by("release_at"))
    assert len(insts) == 12 and all(inst.signature for inst in insts)
    issued = insts[0].issued_at
    waves = sorted({round((inst.release_at - issued).total_seconds()) for inst in insts})
    assert waves == [0, settings.RMM_WAVE_INTERVAL_SECONDS, 2 * settings.RMM_WAVE_INTERVAL_SECONDS]
    assert HistoryEvent.objects.filter(action="job.created").count() == 12
    assert HistoryEvent.objects.filter(action="instruction.issued").count() == 12


def test_every_asset_of_a_site(world, site):
    r = batch(world, site=site.name)
    assert r.status_code == 201, r.content
    assert r.json()["count"] == 12


def test_an_asset_outside_the_cases_site_refuses_the_whole_batch(world):
    r = batch(world, assets=[*world["assets"], world["elsewhere"]])
    assert r.status_code == 400
    assert "outside the PSA case's site" in r.content.decode()
    assert ScriptJob.objects.count() == 0
    assert HistoryEvent.objects.filter(action="refused.script_job.create").exists()


def test_an_engaged_kill_switch_refuses_the_batch(world, caller, site):
    root = caller("root", "admin")
    assert (
        root.post("/api/v1/kill-switches/", {"scope": "site", "target": site.name, "reason": "stop"}).status_code == 201
    )
    r = batch(world, assets=world["assets"])
    assert r.status_code == 403
    assert ScriptJob.objects.count() == 0


def test_a_batch_costs_the_same_number_of_queries_whatever_its_size(world):
    counts = []
    for assets in (world["assets"][:2], world["assets"][2:]):
        with CaptureQueriesContext(connection) as ctx:
            assert batch(world, assets=assets).status_code == 201
        counts.append(len(ctx.captured_queries))
    assert counts[0] == counts[1], counts


def test_the_first_wave_is_leased_at_once_in_the_order_asked(world, settings, client):
    settings.RMM_WAVE_SIZE = 5
    order = world["assets"][::-1]
    assert batch(world, assets=order).status_code == 201
    for index, leased in ((0, 1), (4, 1), (5, 0)):  # the 5th asked for is in the first wave, the 6th is not
        agent, auth = next(pair for pair in world["agents"] if str(pair[0].asset_id) == order[index])
        r = client.post(
            "/api/v1/agent/heartbeat/",
            data=json.dumps({"capacity": 4}),
            content_type="application/json",
            HTTP_AUTHORIZATION=auth,
        )
        assert r.status_code == 200, r.content
        assert len(r.json()["instructions"]) == leased, index
