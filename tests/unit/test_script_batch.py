"""One script across many assets: POST /api/v1/script-jobs/batch/ makes one job per asset, under
the same rules as a single job, checked once, at a cost that does not grow with the batch."""

import json

import pytest
from django.db import connection
from django.db.models import Count
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


def batch_signed_later(w, settings, capture, **body):
    """The batch, then what the task cluster does once it commits (run here, in process)."""
    settings.RMM_TASKS_SYNC = True
    with capture(execute=True):
        r = batch(w, **body)
    assert r.status_code == 201, r.content
    return r.json()


def instructions_of(body) -> list[Instruction]:
    ids = [job["id"] for job in body["jobs"]]
    return list(Instruction.objects.filter(job_id__in=ids).order_by("release_at", "issued_at"))


def test_one_queued_job_and_one_signed_instruction_per_asset_released_in_waves(
    world, settings, django_capture_on_commit_callbacks
):
    settings.RMM_WAVE_SIZE = 5
    body = batch_signed_later(world, settings, django_capture_on_commit_callbacks, assets=world["assets"])
    assert body["count"] == 12 and body["status"] == "queued"
    assert sorted(job["asset"] for job in body["jobs"]) == sorted(world["assets"])
    jobs = ScriptJob.objects.filter(pk__in=[job["id"] for job in body["jobs"]])
    assert jobs.count() == 12 and set(jobs.values_list("status", flat=True)) == {"queued"}
    insts = instructions_of(body)
    assert len(insts) == 12 and all(inst.signature for inst in insts)
    queued = insts[0].issued_at  # the first wave is signed as the batch is queued
    waves = sorted({round((inst.release_at - queued).total_seconds()) for inst in insts})
    assert waves == [0, settings.RMM_WAVE_INTERVAL_SECONDS, 2 * settings.RMM_WAVE_INTERVAL_SECONDS]
    assert HistoryEvent.objects.filter(action="job.created").count() == 12
    assert HistoryEvent.objects.filter(action="instruction.issued").count() == 12


def test_the_answer_comes_with_the_first_wave_signed_and_the_later_ones_follow(world, settings):
    """Without the task cluster (its task is not run here) only the first wave exists yet."""
    settings.RMM_WAVE_SIZE = 5
    r = batch(world, assets=world["assets"])
    assert r.status_code == 201, r.content
    insts = instructions_of(r.json())
    assert len(insts) == 5 and all(inst.release_at <= inst.issued_at for inst in insts)  # leasable now
    assert ScriptJob.objects.filter(status="queued").count() == 12


def test_a_lost_task_is_made_up_for_by_the_sweep(world, settings):
    from datetime import timedelta

    from django.utils import timezone

    from rmm.engine import services as engine

    settings.RMM_WAVE_SIZE = 5
    body = batch(world, assets=world["assets"]).json()  # its later waves' task never runs
    assert len(instructions_of(body)) == 5
    engine.sweep(timezone.now())  # not yet: the task may only be late
    assert len(instructions_of(body)) == 5
    later = timezone.now() + timedelta(minutes=6)
    engine.sweep(later)
    insts = instructions_of(body)
    assert len(insts) == 12 and all(inst.signature for inst in insts)
    late = sorted(inst.release_at for inst in insts[5:])  # in waves from the sweep, not all at once
    assert late[0] == later and late[-1] == later + timedelta(seconds=settings.RMM_WAVE_INTERVAL_SECONDS)
    assert HistoryEvent.objects.filter(action="instruction.issued", actor="system").count() == 7


def test_a_kill_switch_engaged_while_later_waves_wait_aborts_them_even_once_released(
    world, caller, site, settings, django_capture_on_commit_callbacks
):
    """Signing at once would have let the switch abort every queued instruction; signing later
    must not let any through, even when the switch was released before the task ran."""
    settings.RMM_WAVE_SIZE = 5
    settings.RMM_TASKS_SYNC = True
    root = caller("root", "admin")

    def engage_and_release(*args, **kwargs):
        r = root.post("/api/v1/kill-switches/", {"scope": "site", "target": site.name, "reason": "stop"})
        assert r.status_code == 201, r.content
        assert root.post(f"/api/v1/kill-switches/{r.json()['id']}/release/", {"reason": "ok"}).status_code == 200

    with django_capture_on_commit_callbacks() as callbacks:
        body = batch(world, assets=world["assets"]).json()
    engage_and_release()
    for callback in callbacks:
        callback()
    insts = instructions_of(body)
    assert len(insts) == 5 and {inst.status for inst in insts} == {"aborted"}  # by the switch itself
    statuses = dict(ScriptJob.objects.values_list("status").annotate(n=Count("id")))
    assert statuses == {"aborted": 12}
    reasons = set(ScriptJob.objects.exclude(pk__in=[i.job_id for i in insts]).values_list("status_reason", flat=True))
    assert reasons == {f"kill switch engaged on site {site.name} while the job waited for its wave"}


def test_authority_withdrawn_while_later_waves_wait_aborts_them(world, settings, django_capture_on_commit_callbacks):
    settings.RMM_WAVE_SIZE = 5
    settings.RMM_TASKS_SYNC = True
    with django_capture_on_commit_callbacks() as callbacks:
        body = batch(world, assets=world["assets"]).json()
    task = world["task"]
    r = world["psa"].put(
        f"/api/v1/psa/tasks/{task.pk}/",
        {"case": str(task.case_id), "title": "Run fix", "status": "closed"},
        format="json",
    )
    assert r.status_code == 200, r.content
    for callback in callbacks:
        callback()
    assert len(instructions_of(body)) == 5
    later = ScriptJob.objects.exclude(pk__in=[inst.job_id for inst in instructions_of(body)])
    assert later.count() == 7 and set(later.values_list("status", flat=True)) == {"aborted"}
    assert all(
        reason.startswith("no authority: PSA task is closed")
        for reason in later.values_list("status_reason", flat=True)
    )


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


def test_an_agent_revoked_while_its_wave_waits_gets_no_instruction(
    world, caller, settings, django_capture_on_commit_callbacks
):
    from rmm.inventory import services as inventory

    settings.RMM_WAVE_SIZE = 5
    settings.RMM_TASKS_SYNC = True
    with django_capture_on_commit_callbacks() as callbacks:
        body = batch(world, assets=world["assets"]).json()
    last = world["agents"][-1][0]
    inventory.revoke_agent(caller("root", "admin").user, last, "stolen laptop")
    for callback in callbacks:
        callback()
    assert len(instructions_of(body)) == 11
    job = ScriptJob.objects.get(asset_id=last.asset_id)
    assert (job.status, job.status_reason) == (
        "aborted",
        "the asset's agent was revoked while the job waited for its wave",
    )
