"""The job kind contract, over every registered kind: create, approve, render, run (one step and
three where the kind renders them), a failed middle step, abort, lose, and evidence for every
finished instruction, written by the engine with the kind's document. The agent's side is played
by the engine's own lease and result services, in process."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from evidence.models import RmmEvidence
from evidence.services import read_blob
from rmm.engine import registry
from rmm.engine import services as engine
from rmm.engine.models import Instruction, KillSwitch, KillSwitchScope
from rmm.engine.services import kill_switches
from rmm.history.models import HistoryEvent
from rmm_agent.results import make_result
from tests.helpers import approved_authority, make_agent
from tests.stepkind.jobs import create_step_job
from tests.support.kind_examples import EXAMPLES, World, stdout_of

KINDS = sorted(kind.name for kind in registry.all_kinds())


@pytest.fixture
def w(caller, site):
    psa = caller("psa", "psa")
    tech = caller("tech", "technician")
    boss = caller("boss", "approver")
    agent, _ = make_agent(site, "contract-host")
    return World(site, psa.user, tech.user, boss.user, approved_authority(site, psa.user), agent)


def fresh(job):
    return type(job).objects.get(pk=job.pk)


def instructions(job):
    return list(engine.job_instructions(job).order_by("step", "issued_at"))


def lease(w, now=None):
    return engine.lease(w.agent, 4, now or timezone.now())


def report(w, inst, *, exit_code=0, outcome="completed"):
    body = make_result(str(inst.pk), outcome, exit_code=exit_code, stdout=stdout_of(inst, f"step {inst.step}\n"))
    return engine.ingest_result(w.agent, body)


def actions(job) -> list[str]:
    return list(
        HistoryEvent.objects.filter(subject_id=str(job.pk)).order_by("sequence").values_list("action", flat=True)
    )


def evidence_of(job) -> list[dict]:
    """The job's evidence documents, oldest first."""
    rows = RmmEvidence.objects.filter(related_id=job.pk).order_by("history_sequence")
    return [json.loads(read_blob(row)) for row in rows]


def assert_evidence_for_each_finished_instruction(job):
    """One record per finished instruction, of the kind's type, naming that instruction."""
    kind = registry.kind_of(job)
    finished = {str(inst.pk) for inst in instructions(job) if inst.finished_at is not None}
    documents = evidence_of(job)
    assert len(documents) == len(finished)
    assert {doc["instruction"]["id"] for doc in documents} == finished
    assert {doc["evidence_type"] for doc in documents} == {kind.evidence_type}
    assert set(RmmEvidence.objects.filter(related_id=job.pk).values_list("evidence_type", flat=True)) <= {
        kind.evidence_type
    }


def run_steps(w, job, count: int, *, fail: int | None = None) -> None:
    """Lease and report ``count`` steps in order, ``fail`` exiting 1."""
    for n in range(count):
        [inst] = lease(w)
        assert (inst.job_id, inst.step) == (job.pk, n)
        assert report(w, inst, exit_code=1 if n == fail else 0) == (201, {"status": "accepted"})


def test_every_registered_kind_has_a_contract_example():
    assert set(EXAMPLES) == set(KINDS)


@pytest.mark.parametrize("kind_name", KINDS)
def test_create_and_render_issue_the_first_step_only(w, kind_name):
    example = EXAMPLES[kind_name]
    job = example.make(w, steps=max(example.steps))
    specs = registry.get(kind_name).render(fresh(job))
    assert len(specs) == max(example.steps) and {spec.asset.pk for spec in specs} == {w.agent.asset_id}
    assert fresh(job).status == "queued"
    [inst] = instructions(job)
    assert inst.step == 0 and json.loads(inst.payload)["step"] == 0
    # a kind whose jobs always wait for a second person (a patch installs as root) was approved
    approved = ["job.queued"] if getattr(example, "always_approved", False) else []
    assert actions(job) == ["job.created", *approved]


@pytest.mark.parametrize("kind_name", KINDS)
def test_approve_queues_the_first_step(w, kind_name):
    job = EXAMPLES[kind_name].make(w, requires_approval=True)
    assert fresh(job).status == "awaiting_approval" and instructions(job) == []
    engine.approve_job(fresh(job), w.boss)
    assert fresh(job).status == "queued"
    assert [inst.step for inst in instructions(job)] == [0]
    assert actions(job) == ["job.created", "job.queued"]


@pytest.mark.parametrize(
    ("kind_name", "steps"), [(name, n) for name in KINDS for n in EXAMPLES[name].steps], ids=lambda v: str(v)
)
def test_a_job_runs_its_steps_in_order_and_succeeds(w, kind_name, steps):
    example = EXAMPLES[kind_name]
    job = example.make(w, steps=steps)
    for n in range(steps):
        [inst] = lease(w)
        assert inst.step == n
        assert fresh(job).status == "running"
        assert lease(w) == []  # the next step waits for this one
        assert report(w, inst) == (201, {"status": "accepted"})
        if n < steps - 1:
            assert fresh(job).status == "running"
            assert [i.status for i in instructions(job)] == ["succeeded"] * (n + 1) + ["queued"]
    assert fresh(job).status == "succeeded"
    assert [i.step for i in instructions(job)] == list(range(steps))
    assert actions(job).count("job.running") == 1 and actions(job)[-1] == "job.succeeded"
    assert_evidence_for_each_finished_instruction(job)
    assert [doc["job"]["status"] for doc in evidence_of(job)] == ["running"] * (steps - 1) + ["succeeded"]


@pytest.mark.parametrize("kind_name", KINDS)
def test_a_failed_middle_step_fails_the_job_and_nothing_after_it_runs(w, kind_name):
    steps = max(EXAMPLES[kind_name].steps)
    middle = steps // 2  # a one-step kind's only step
    job = EXAMPLES[kind_name].make(w, steps=steps, fail_step=middle)
    run_steps(w, job, middle + 1, fail=middle)
    job = fresh(job)
    assert job.status == "failed"
    assert [i.status for i in instructions(job)] == ["succeeded"] * middle + ["failed"]
    assert lease(w) == []
    assert actions(job)[-1] == "job.failed"
    assert_evidence_for_each_finished_instruction(job)


@pytest.mark.parametrize("kind_name", KINDS)
def test_aborting_a_job_between_or_during_steps_aborts_it(w, kind_name):
    steps = max(EXAMPLES[kind_name].steps)
    job = EXAMPLES[kind_name].make(w, steps=steps)
    run_steps(w, job, steps - 1)  # the last step is queued (a one-step kind: its only step)
    [running] = lease(w)
    engine.stop_instructions(engine.job_instructions(job), w.boss, "stop it")
    assert report(w, running, exit_code=None, outcome="aborted") == (201, {"status": "accepted"})
    job = fresh(job)
    assert (job.status, job.status_reason.endswith("stop it")) == ("aborted", True)
    assert actions(job)[-1] == "job.aborted"
    assert_evidence_for_each_finished_instruction(job)


@pytest.mark.parametrize("kind_name", KINDS)
def test_a_step_whose_agent_never_reports_is_lost_and_so_is_the_job(w, kind_name):
    steps = max(EXAMPLES[kind_name].steps)
    job = EXAMPLES[kind_name].make(w, steps=steps)
    run_steps(w, job, steps - 1)
    [inst] = lease(w)
    engine.sweep(inst.lease_expires_at + timedelta(seconds=1))
    job = fresh(job)
    assert job.status == "lost" and actions(job)[-1] == "job.lost"
    assert Instruction.objects.get(pk=inst.pk).status == "lost"
    assert_evidence_for_each_finished_instruction(job)
    assert evidence_of(job)[-1]["result"]["outcome"] == "lost"


@pytest.mark.parametrize("kind_name", KINDS)
def test_a_late_result_is_kept_with_evidence_of_its_own(w, kind_name):
    job = EXAMPLES[kind_name].make(w)
    [inst] = lease(w)
    engine.sweep(inst.lease_expires_at + timedelta(seconds=1))
    assert report(w, inst)[1]["status"] == "accepted_late"
    assert fresh(job).status == "lost"
    documents = evidence_of(job)
    assert len(documents) == 2 and documents[-1]["result"]["late"] is True


# --- the multi-step policies, on the test-only kind ----------------------------------------


def test_continue_runs_the_next_step_after_a_failure_and_the_job_still_fails(w):
    job = create_step_job(w.psa, asset=w.agent.asset, task=w.task, fail_step=1, on_failure="continue")
    run_steps(w, job, 3, fail=1)
    job = fresh(job)
    assert (job.status, job.status_reason) == ("failed", "step 2 of 3 failed")
    assert [i.status for i in instructions(job)] == ["succeeded", "failed", "succeeded"]
    assert_evidence_for_each_finished_instruction(job)


def test_cleanup_runs_the_cleanup_step_instead_of_the_rest(w):
    job = create_step_job(w.psa, asset=w.agent.asset, task=w.task, fail_step=1, on_failure="cleanup")
    run_steps(w, job, 2, fail=1)
    [cleanup] = lease(w)
    assert cleanup.step == 3 and "cleanup" in cleanup.content  # step 2 skipped
    assert fresh(job).status == "running"
    assert report(w, cleanup)[0] == 201
    job = fresh(job)
    assert job.status == "failed" and job.status_reason.startswith("step 2 of 4 failed")
    assert [i.step for i in instructions(job)] == [0, 1, 3]
    assert_evidence_for_each_finished_instruction(job)


def test_cleanup_steps_are_skipped_when_every_step_succeeds(w):
    job = create_step_job(w.psa, asset=w.agent.asset, task=w.task, on_failure="cleanup")
    run_steps(w, job, 3)
    assert fresh(job).status == "succeeded" and lease(w) == []
    assert [i.step for i in instructions(job)] == [0, 1, 2]


def test_a_step_asked_to_stop_that_finishes_all_the_same_stops_its_job(w):
    job = create_step_job(w.psa, asset=w.agent.asset, task=w.task)
    [first] = lease(w)
    # Engaged while the first step runs: the running step is marked to be killed, and is
    # reported as succeeded all the same (the agent finished it before its next heartbeat).
    kill_switches.engage(w.boss, scope=KillSwitchScope.SITE, target=w.site.name, reason="incident")
    assert report(w, first) == (201, {"status": "accepted"})
    job = fresh(job)
    assert (job.status, job.status_reason) == ("aborted", "kill switch engaged on site alpha: incident")
    assert [i.step for i in instructions(job)] == [0]
    assert_evidence_for_each_finished_instruction(job)


def test_a_kill_switch_found_when_the_next_step_is_issued_aborts_the_job(w):
    """A switch that no scan marked the running step for (written behind the service's back,
    or engaged between the step's result and its next step) is seen when the step is issued."""
    job = create_step_job(w.psa, asset=w.agent.asset, task=w.task)
    [first] = lease(w)
    KillSwitch.objects.create(scope=KillSwitchScope.SITE, site=w.site, reason="incident", engaged_by=w.boss)
    assert report(w, first) == (201, {"status": "accepted"})
    job = fresh(job)
    assert (job.status, job.status_reason) == ("aborted", "kill switch engaged on site alpha before step 2 of 3")
    assert [i.step for i in instructions(job)] == [0]
    assert_evidence_for_each_finished_instruction(job)


def test_a_job_aborted_while_a_middle_step_runs_issues_no_further_step(w):
    job = create_step_job(w.psa, asset=w.agent.asset, task=w.task)
    [first] = lease(w)
    engine.stop_instructions(engine.job_instructions(job), w.boss, "stop it")
    assert report(w, first) == (201, {"status": "accepted"})  # done before the agent heard
    job = fresh(job)
    assert (job.status, job.status_reason) == ("aborted", "stop it")
    assert [i.step for i in instructions(job)] == [0] and lease(w) == []


def test_a_multi_step_result_costs_a_constant_number_of_queries(w, site):
    """The result that issues the next step costs a few queries more than the last one, whatever
    the number of steps before it and the size of the fleet."""

    def middle_result_queries() -> int:
        job = create_step_job(w.psa, asset=w.agent.asset, task=w.task, steps=3)
        run_steps(w, job, 1)
        [inst] = lease(w)
        body = make_result(str(inst.pk), "completed", exit_code=0, stdout="x\n")
        with CaptureQueriesContext(connection) as ctx:
            assert engine.ingest_result(w.agent, body)[0] == 201
        run_steps(w, job, 0)
        [last] = lease(w)
        report(w, last)
        return len(ctx.captured_queries)

    middle_result_queries()  # warm per-process caches
    alone = middle_result_queries()
    for n in range(20):
        other, _ = make_agent(site, f"fleet-{n:02d}")
        create_step_job(w.psa, asset=other.asset, task=w.task, steps=3)
    assert middle_result_queries() == alone


# Kinds that can render one step (containment always renders two: its own test takes its reads in together).
@pytest.mark.parametrize("kind_name", [name for name in KINDS if 1 in EXAMPLES[name].steps])
def test_one_step_jobs_taken_in_together_end_and_have_evidence_as_one_at_a_time(w, kind_name):
    """Results that arrive together (the agent tier's collector) are taken in together, through
    the kind's store_results or its store_result for each: the same statuses, history and
    evidence as one by one."""
    worlds = [dataclasses.replace(w, agent=make_agent(w.site, f"together-{n}")[0]) for n in range(3)]
    jobs = [EXAMPLES[kind_name].make(one, steps=1, fail_step=0 if n == 1 else None) for n, one in enumerate(worlds)]
    leased = [lease(one) for one in worlds]
    assert [[inst.job_id for inst in insts] for insts in leased] == [[job.pk] for job in jobs]
    reports = [
        (one.agent, make_result(str(inst.pk), "completed", exit_code=int(n == 1), stdout=stdout_of(inst, f"job {n}\n")))
        for n, (one, [inst]) in enumerate(zip(worlds, leased, strict=True))
    ]
    assert engine.ingest_results(reports) == [(201, {"status": "accepted"})] * 3
    assert [fresh(job).status for job in jobs] == ["succeeded", "failed", "succeeded"]
    for job in jobs:
        assert actions(job)[-1] == f"job.{fresh(job).status}"
        assert_evidence_for_each_finished_instruction(job)
        [document] = evidence_of(job)
        assert document["job"]["status"] == fresh(job).status
        assert document["instruction"]["id"] == str(instructions(job)[0].pk)
