"""One script across many assets: POST /api/v1/script-jobs/batch/ makes one job per asset, under
the same rules as a single job, checked once, at a cost that does not grow with the batch."""

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from rmm.engine import services as engine
from rmm.engine.models import Instruction, KillSwitch
from rmm.engine.services import issuing
from rmm.history import services as history
from rmm.history.models import HistoryEvent
from rmm.inventory import services as inventory
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


def queue_batch(w, settings, capture, **body) -> dict:
    """The batch, with its later waves' tasks held back: they are returned, to run when the test says."""
    settings.RMM_WAVE_SIZE = 5
    settings.RMM_TASKS_SYNC = True
    with capture() as later_waves:
        r = batch(w, **{"assets": w["assets"], **body})
    assert r.status_code == 201, r.content
    return r.json(), later_waves


def run(later_waves) -> None:
    for task in later_waves:
        task()


def instructions_of(body) -> list[Instruction]:
    ids = [job["id"] for job in body["jobs"]]
    return list(Instruction.objects.filter(job_id__in=ids).order_by("release_at", "issued_at"))


def later_jobs(body):
    """The jobs of the batch outside its first wave (5 of 12 assets are in it)."""
    return ScriptJob.objects.filter(pk__in=[job["id"] for job in body["jobs"][5:]])


def test_one_queued_job_and_one_signed_instruction_per_asset_released_in_waves(
    world, settings, django_capture_on_commit_callbacks
):
    body, later_waves = queue_batch(world, settings, django_capture_on_commit_callbacks)
    assert body["count"] == 12 and body["status"] == "queued"
    assert sorted(job["asset"] for job in body["jobs"]) == sorted(world["assets"])
    jobs = ScriptJob.objects.filter(pk__in=[job["id"] for job in body["jobs"]])
    assert jobs.count() == 12 and set(jobs.values_list("status", flat=True)) == {"queued"}
    # The answer comes with the first wave signed and leasable; the later ones follow from the cluster.
    insts = instructions_of(body)
    assert len(insts) == 5 and all(inst.release_at <= inst.issued_at for inst in insts)
    run(later_waves)
    insts = instructions_of(body)
    assert len(insts) == 12 and all(inst.signature for inst in insts)
    queued = insts[0].issued_at
    waves = sorted({round((inst.release_at - queued).total_seconds()) for inst in insts})
    assert waves == [0, settings.RMM_WAVE_INTERVAL_SECONDS, 2 * settings.RMM_WAVE_INTERVAL_SECONDS]
    assert HistoryEvent.objects.filter(action="job.created").count() == 12
    issued = HistoryEvent.objects.filter(action="instruction.issued")
    assert issued.count() == 12 and set(issued.values_list("actor", flat=True)) == {"user:psa"}
    run(later_waves)  # a task delivered twice stores nothing twice
    assert len(instructions_of(body)) == 12 and issued.count() == 12


def test_a_task_that_runs_late_keeps_the_pace_of_the_waves(world, settings, django_capture_on_commit_callbacks):
    body, _ = queue_batch(world, settings, django_capture_on_commit_callbacks)
    queued_at = instructions_of(body)[0].issued_at
    late = queued_at + timedelta(seconds=5 * settings.RMM_WAVE_INTERVAL_SECONDS)
    ids = [job["id"] for job in body["jobs"][5:]]
    assert engine.issue_later_waves("script", ids, "user:psa", 5, queued_at, now=late) == 7
    releases = sorted(inst.release_at for inst in instructions_of(body)[5:])
    assert releases[0] == late  # not all released at once though every wave is past
    assert releases[-1] == late + timedelta(seconds=settings.RMM_WAVE_INTERVAL_SECONDS)


def test_a_lost_task_is_made_up_for_by_the_sweep_in_the_requesters_name(
    world, settings, django_capture_on_commit_callbacks
):
    body, _ = queue_batch(world, settings, django_capture_on_commit_callbacks)  # its tasks never run
    engine.sweep(timezone.now())  # not yet: the task may only be late
    assert len(instructions_of(body)) == 5
    later = timezone.now() + timedelta(minutes=11)
    engine.sweep(later)
    insts = instructions_of(body)
    assert len(insts) == 12 and all(inst.signature for inst in insts)
    interval = timedelta(seconds=settings.RMM_WAVE_INTERVAL_SECONDS)
    releases = sorted(inst.release_at for inst in insts[5:])  # in waves, not all at once
    assert releases[0] == later + interval and releases[-1] == later + 2 * interval
    # The system only ends work (Law 4): what it issues is recorded as the requester's.
    assert HistoryEvent.objects.filter(action="instruction.issued", actor="system").count() == 0
    assert HistoryEvent.objects.filter(action="instruction.issued", actor="user:psa").count() == 12
    vias = [e.payload.get("via") for e in HistoryEvent.objects.filter(action="instruction.issued").order_by("sequence")]
    assert vias == [None] * 5 + ["sweep"] * 7  # the record says they were issued late, and by what
    engine.sweep(later)
    assert len(instructions_of(body)) == 12


def test_a_batch_that_cannot_be_issued_does_not_hold_up_the_others(
    world, caller, settings, django_capture_on_commit_callbacks, monkeypatch, caplog
):
    first, _ = queue_batch(world, settings, django_capture_on_commit_callbacks)  # tasks lost
    other = dict(world, psa=caller("psa2", "psa"))
    second, _ = queue_batch(other, settings, django_capture_on_commit_callbacks)
    issue = engine.issue_later_waves

    def failing_for_the_first(kind_name, job_ids, actor, *args, **kwargs):
        if actor == "user:psa":
            raise RuntimeError("broken")
        return issue(kind_name, job_ids, actor, *args, **kwargs)

    monkeypatch.setattr(issuing, "issue_later_waves", failing_for_the_first)
    engine.sweep(timezone.now() + timedelta(minutes=11))
    assert len(instructions_of(first)) == 5 and len(instructions_of(second)) == 12
    assert "issuing the later waves of 7 script jobs failed" in caplog.text
    # Final and said: they are not picked first again at every sweep.
    later = later_jobs(first)
    assert set(later.values_list("status", flat=True)) == {"aborted"}
    assert set(later.values_list("status_reason", flat=True)) == {
        "its instruction could not be issued: RuntimeError('broken')"
    }
    assert history.verify_chain().ok


def test_later_waves_in_many_tasks_keep_one_pace_even_when_late(
    world, settings, django_capture_on_commit_callbacks, monkeypatch
):
    monkeypatch.setattr(issuing, "TASK_CHUNK", 3)
    body, later_waves = queue_batch(world, settings, django_capture_on_commit_callbacks)
    tasks = [cb for cb in later_waves if cb.__qualname__.startswith("enqueue_on_commit")]
    assert len(tasks) == 3  # 7 later jobs in tasks of 3, 3 and 1
    queued_at = instructions_of(body)[0].issued_at
    interval = timedelta(seconds=settings.RMM_WAVE_INTERVAL_SECONDS)
    ids = [job["id"] for job in body["jobs"]]
    # The cluster was 10 intervals late, and ran the three tasks a few seconds apart.
    for n, (begin, end) in enumerate(((5, 8), (8, 11), (11, 12))):
        late = queued_at + 10 * interval + timedelta(seconds=5 * n)
        engine.issue_later_waves("script", ids[begin:end], "user:psa", begin, queued_at, now=late)
    release = {str(inst.job_id): inst.release_at for inst in instructions_of(body)}
    assert len(release) == 12
    waves = [release[pk] for pk in ids]
    assert waves == sorted(waves)  # in the order asked, never two waves on top of each other
    for wave in (waves[5:10], waves[10:]):  # five per wave
        assert max(wave) - min(wave) < interval
    assert waves[10] - waves[9] >= interval


def test_sweeps_one_after_another_follow_the_waves_already_queued(
    world, settings, django_capture_on_commit_callbacks, monkeypatch
):
    monkeypatch.setattr(issuing, "TASK_CHUNK", 5)
    body, _ = queue_batch(world, settings, django_capture_on_commit_callbacks)  # its tasks never run
    interval = timedelta(seconds=settings.RMM_WAVE_INTERVAL_SECONDS)
    first = timezone.now() + timedelta(minutes=11)
    assert engine.sweep(first) == 5
    second = first + timedelta(seconds=1)  # the first sweep's wave is still to come
    assert engine.sweep(second) == 2
    releases = sorted(inst.release_at for inst in instructions_of(body)[5:])
    assert releases[:5] == [first + interval] * 5
    assert releases[5:] == [first + 2 * interval] * 2  # after the first sweep's wave, not on top of it


def _switch(caller, scope: str, target: str | None, *, release: bool = False) -> None:
    root = caller("root", "admin")
    r = root.post("/api/v1/kill-switches/", {"scope": scope, "target": target, "reason": "stop"}, format="json")
    assert r.status_code == 201, r.content
    if release:
        assert root.post(f"/api/v1/kill-switches/{r.json()['id']}/release/", {"reason": "ok"}).status_code == 200


def _aborted_by_switch(body, label: str) -> None:
    """The first wave aborted by the switch's own scan; the later waves, never issued, by the task."""
    first = [job["id"] for job in body["jobs"][:5]]
    assert set(Instruction.objects.filter(job_id__in=first).values_list("status", flat=True)) == {"aborted"}
    jobs = later_jobs(body)
    assert set(jobs.values_list("status", flat=True)) == {"aborted"}
    assert set(jobs.values_list("status_reason", flat=True)) == {
        f"kill switch engaged on {label} while the job waited for its wave"
    }
    assert not Instruction.objects.filter(job_id__in=[job.pk for job in jobs]).exists()  # nothing signed to run
    aborted = HistoryEvent.objects.filter(action="job.aborted", subject_id__in=[str(job.pk) for job in jobs])
    assert aborted.count() == 7 and set(aborted.values_list("actor", flat=True)) == {"system"}


@pytest.mark.parametrize("scope", ["site", "global", "asset"])
def test_a_kill_switch_engaged_and_released_while_later_waves_wait_aborts_them(
    world, caller, site, settings, django_capture_on_commit_callbacks, scope
):
    """Signed at once, they would have been aborted by the switch: signed later, not one may run."""
    body, later_waves = queue_batch(world, settings, django_capture_on_commit_callbacks)
    last = body["jobs"][-1]["asset"]
    target = {"site": site.name, "global": None, "asset": last}[scope]
    _switch(caller, scope, target, release=True)
    run(later_waves)
    if scope == "asset":
        job = ScriptJob.objects.get(pk=body["jobs"][-1]["id"])
        assert job.status == "aborted" and job.status_reason.startswith(
            f"kill switch engaged on asset {job.asset.hostname}"
        )
        assert later_jobs(body).filter(status="queued").count() == 6  # the rest of the wave is not covered
    else:
        _aborted_by_switch(body, "site alpha" if scope == "site" else "everything")


def test_a_switch_still_engaged_when_the_wave_is_signed_aborts_it(
    world, caller, site, settings, django_capture_on_commit_callbacks
):
    body, later_waves = queue_batch(world, settings, django_capture_on_commit_callbacks)
    _switch(caller, "site", site.name)
    run(later_waves)
    _aborted_by_switch(body, "site alpha")


def test_switches_elsewhere_or_released_before_the_batch_stop_nothing(
    world, caller, site, other_site, settings, django_capture_on_commit_callbacks
):
    _switch(caller, "site", site.name, release=True)  # before the batch: the batch was allowed
    # A minute before: a switch released within engine.CLOCK_SLACK of the batch still counts.
    KillSwitch.objects.update(released_at=timezone.now() - timedelta(minutes=1))
    body, later_waves = queue_batch(world, settings, django_capture_on_commit_callbacks)
    _switch(caller, "site", other_site.name)
    run(later_waves)
    assert set(later_jobs(body).values_list("status", flat=True)) == {"queued"}
    assert {inst.status for inst in instructions_of(body)} == {"queued"} and len(instructions_of(body)) == 12


def test_a_switch_released_just_before_the_batch_still_counts(
    world, caller, site, settings, django_capture_on_commit_callbacks
):
    """Processes' clocks differ a little: a release within engine.CLOCK_SLACK of the batch counts."""
    _switch(caller, "site", site.name, release=True)
    KillSwitch.objects.update(released_at=timezone.now() - engine.CLOCK_SLACK / 2)
    body, later_waves = queue_batch(world, settings, django_capture_on_commit_callbacks)
    run(later_waves)
    assert set(later_jobs(body).values_list("status", flat=True)) == {"aborted"}


@pytest.mark.parametrize("level", ["task", "case"])
def test_authority_withdrawn_while_later_waves_wait_aborts_them_for_good(
    world, settings, django_capture_on_commit_callbacks, level
):
    body, later_waves = queue_batch(world, settings, django_capture_on_commit_callbacks)
    task = world["task"]

    def put(status: str) -> None:
        if level == "task":
            path, data = f"/api/v1/psa/tasks/{task.pk}/", {"case": str(task.case_id), "title": "Run fix"}
        else:
            path, data = f"/api/v1/psa/cases/{task.case_id}/", {"title": "Patch Tuesday", "site": "alpha"}
        r = world["psa"].put(path, {**data, "status": status}, format="json")
        assert r.status_code == 200, r.content

    put("closed")
    put("approved")  # granted again before the task runs: what was withdrawn stays stopped
    run(later_waves)
    assert {inst.status for inst in instructions_of(body)} == {"aborted"} and len(instructions_of(body)) == 5
    later = later_jobs(body)
    assert set(later.values_list("status", flat=True)) == {"aborted"}
    assert all(
        r.startswith(f"authority withdrawn: PSA {level} is closed")
        for r in later.values_list("status_reason", flat=True)
    )


def test_authority_granted_again_before_the_withdrawal_ran_lets_nothing_run(
    world, settings, django_capture_on_commit_callbacks, monkeypatch
):
    """The case is closed; before its withdrawal runs, the PSA approves it again and the later
    waves' task signs them on the approved case. The withdrawal must still stop every one."""
    body, later_waves = queue_batch(world, settings, django_capture_on_commit_callbacks)
    task = world["task"]
    path, data = f"/api/v1/psa/cases/{task.case_id}/", {"title": "Patch Tuesday", "site": "alpha"}
    withdraw = engine.withdraw_authority

    def reopened_first(*args, **kwargs):
        monkeypatch.setattr(engine, "withdraw_authority", withdraw)
        assert world["psa"].put(path, {**data, "status": "approved"}, format="json").status_code == 200
        run(later_waves)
        assert len(instructions_of(body)) == 12  # signed on the approved case
        return withdraw(*args, **kwargs)

    monkeypatch.setattr(engine, "withdraw_authority", reopened_first)
    assert world["psa"].put(path, {**data, "status": "closed"}, format="json").status_code == 200
    insts = instructions_of(body)
    assert len(insts) == 12 and {inst.status for inst in insts} == {"aborted"}
    assert set(ScriptJob.objects.values_list("status", flat=True)) == {"aborted"}
    agent, _ = world["agents"][-1]
    assert engine.lease(agent, 4, timezone.now() + timedelta(minutes=5)) == []
    engine.sweep(timezone.now() + timedelta(hours=1))  # nothing left half-ended for the sweep to trip on
    assert history.verify_chain().ok


def test_authority_that_expired_while_later_waves_wait_aborts_them(world, settings, django_capture_on_commit_callbacks):
    body, later_waves = queue_batch(world, settings, django_capture_on_commit_callbacks)
    type(world["task"]).objects.filter(pk=world["task"].pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    run(later_waves)
    later = later_jobs(body)
    assert set(later.values_list("status", flat=True)) == {"aborted"}
    assert all("PSA task authority expired" in r for r in later.values_list("status_reason", flat=True))


def test_the_sweep_stops_later_waves_whose_authority_expired_before_their_task_ran(
    world, settings, django_capture_on_commit_callbacks
):
    """Expired, swept, then extended by the PSA: signed at once they would have been stopped by
    that sweep; signed later, they must be too."""
    body, later_waves = queue_batch(world, settings, django_capture_on_commit_callbacks)
    task = type(world["task"]).objects.get(pk=world["task"].pk)
    task.expires_at = timezone.now() - timedelta(seconds=1)
    task.save()
    engine.sweep(timezone.now())
    task.expires_at = timezone.now() + timedelta(days=1)
    task.save()
    run(later_waves)
    later = later_jobs(body)
    assert set(later.values_list("status", flat=True)) == {"aborted"}
    assert set(later.values_list("status_reason", flat=True)) == {"authority withdrawn: PSA task expired"}
    assert not Instruction.objects.filter(job_id__in=[job.pk for job in later]).exists()


def test_an_agent_revoked_while_its_wave_waits_gets_nothing_it_could_run(
    world, caller, settings, django_capture_on_commit_callbacks
):
    body, later_waves = queue_batch(world, settings, django_capture_on_commit_callbacks)
    last = ScriptJob.objects.get(pk=body["jobs"][-1]["id"])
    agent = next(agent for agent, _ in world["agents"] if agent.asset_id == last.asset_id)
    inventory.revoke_agent(caller("root", "admin").user, agent, "stolen laptop")
    run(later_waves)
    last.refresh_from_db()
    assert (last.status, last.status_reason) == (
        "aborted",
        "the asset's agent was revoked while the job waited for its wave",
    )
    assert later_jobs(body).filter(status="queued").count() == 6


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
    assert world["psa"].get("/api/v1/sites/").status_code == 200  # the token's first use is written once
    counts = []
    for assets in (world["assets"][:2], world["assets"][2:]):
        with CaptureQueriesContext(connection) as ctx:
            assert batch(world, assets=assets).status_code == 201
        counts.append(len(ctx.captured_queries))
    assert counts[0] == counts[1], counts


def test_the_first_wave_is_leased_at_once_in_the_order_asked(
    world, settings, client, django_capture_on_commit_callbacks
):
    order = world["assets"][::-1]
    body, later_waves = queue_batch(world, settings, django_capture_on_commit_callbacks, assets=order)
    run(later_waves)
    assert len(instructions_of(body)) == 12  # the 6th's instruction exists, released with the next wave
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
