"""Results that arrive together are taken in together (rmm/engine/intake.py): the same outcome,
history and evidence as one at a time, in a constant number of queries whatever their number,
and a result that cannot join the others costs none of them its answer."""

import dataclasses
import json
from collections import Counter

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from evidence.models import RmmEvidence
from rmm.engine import registry
from rmm.engine.models import Batch, Instruction
from rmm.engine.services.results import ingest_results
from rmm.history import services as history
from rmm.history.models import HistoryEvent
from rmm_agent.results import make_result
from scripting import services as scripting
from scripting.models import ScriptJob, ScriptResult
from tests.helpers import approved_authority, approved_script, make_agent

MAX_TOGETHER_QUERIES = 22  # whatever the number of results: 19 on SQLite, 21 on PostgreSQL (of which 2 ask
# which webhook subscriptions exist: job.finished, and whether anyone hears case.may_close)


@pytest.fixture
def world(caller, site, settings):
    settings.RMM_HEARTBEAT_MIN_SPACING_SECONDS = 0
    settings.RMM_WAVE_SIZE = 1000
    psa = caller("psa", "psa")
    tech = caller("tech", "technician")
    boss = caller("boss", "approver")
    return site, psa, approved_authority(site, psa.user), approved_script(tech.user, boss.user)


def leased(world, count: int, prefix: str) -> list:
    """``count`` agents, each with one leased instruction of one batch: [(agent, instruction id)]."""
    site, psa, task, script = world
    agents = [make_agent(site, f"{prefix}-{n}") for n in range(count)]
    scripting.create_script_jobs(
        psa.user, script_id=script.pk, psa_task_id=task.pk, asset_ids=[agent.asset_id for agent, _ in agents]
    )
    out = []
    for agent, auth in agents:
        answer = Client().post(
            "/api/v1/agent/heartbeat/",
            data=json.dumps({"capacity": 4, "running": []}),
            content_type="application/json",
            HTTP_AUTHORIZATION=auth,
        )
        (payload,) = [json.loads(item["payload"]) for item in answer.json()["instructions"]]
        out.append((agent, payload["instruction_id"]))
    return out


def body(inst_id: str, exit_code: int = 0, stdout: str = "hello\n") -> dict:
    return make_result(inst_id, "completed", exit_code=exit_code, stdout=stdout)


def take_in(items) -> tuple[list, int]:
    with CaptureQueriesContext(connection) as ctx:
        answers = ingest_results(items)
    return answers, len(ctx.captured_queries)


def test_results_taken_in_together_end_as_one_at_a_time_would(world):
    work = leased(world, 6, "together")
    before = HistoryEvent.objects.count()
    answers, _ = take_in([(agent, body(inst_id, exit_code=n % 2)) for n, (agent, inst_id) in enumerate(work)])
    assert answers == [(201, {"status": "accepted"})] * 6
    for n, (agent, inst_id) in enumerate(work):
        inst = Instruction.objects.get(pk=inst_id)
        job = ScriptJob.objects.get(pk=inst.job_id)
        assert (inst.status, job.status) == (("succeeded",) * 2 if n % 2 == 0 else ("failed",) * 2)
        assert inst.result_hash == body(inst_id, exit_code=n % 2)["hash"] and inst.finished_at is not None
        assert job.completed_at is not None
        assert ScriptResult.objects.get(job=job).stdout == "hello\n"
        evidence = RmmEvidence.objects.get(related_id=job.pk)
        assert evidence.history_sequence is not None and evidence.psa_task_id == job.psa_task_id
    actions = Counter(HistoryEvent.objects.filter(sequence__gt=before).values_list("action", flat=True))
    assert actions == {
        "instruction.result": 6,
        "job.succeeded": 3,
        "job.failed": 3,
        "evidence.recorded": 6,
        "batch.completed": 1,
    }
    # Each evidence record names its own event, and the chain still verifies.
    for evidence in RmmEvidence.objects.all():
        event = HistoryEvent.objects.get(sequence=evidence.history_sequence)
        assert (event.action, event.subject_id) == ("evidence.recorded", str(evidence.pk))
    assert history.verify_chain().ok
    batch = Batch.objects.get()
    assert (batch.results, batch.failed, batch.status) == (6, 3, "completed")


def test_their_queries_do_not_grow_with_their_number(world):
    few, many = leased(world, 3, "few"), leased(world, 12, "many")
    _, for_few = take_in([(agent, body(inst_id)) for agent, inst_id in few])
    _, for_many = take_in([(agent, body(inst_id)) for agent, inst_id in many])
    assert for_many == for_few <= MAX_TOGETHER_QUERIES, (for_few, for_many)


def test_structured_results_taken_together_are_stored_at_no_query_more(world):
    plain, scans = leased(world, 3, "plain"), leased(world, 3, "scans")
    _, for_plain = take_in([(agent, body(inst_id)) for agent, inst_id in plain])
    scanned = [
        (agent, make_result(inst_id, "completed", exit_code=0, structured={"n": n}))
        for n, (agent, inst_id) in enumerate(scans)
    ]
    answers, for_scans = take_in(scanned)
    assert answers == [(201, {"status": "accepted"})] * 3
    assert for_scans == for_plain
    for n, (_, inst_id) in enumerate(scans):
        inst = Instruction.objects.get(pk=inst_id)
        assert inst.structured == {"n": n}
        assert ScriptResult.objects.get(job_id=inst.job_id).structured == {"n": n}


def test_a_result_that_cannot_join_the_others_is_answered_alone(world):
    work = leased(world, 4, "mixed")
    (a, first), (b, second), (c, third), (d, fourth) = work
    assert ingest_results([(a, body(first))]) == [(201, {"status": "accepted"})]  # taken in before
    forged = body(fourth)
    forged["stdout"] = "changed after hashing\n"
    answers, _ = take_in(
        [
            (a, body(first)),  # a repeat: already received
            (b, body(second)),
            (c, body(second)),  # another agent's instruction
            (c, body(third)),
            (d, forged),  # its hash does not match its content
            (d, {"instruction_id": fourth}),  # missing fields
            (b, body(second)),  # the same result twice in one batch
        ]
    )
    assert answers == [
        (200, {"status": "already_received"}),
        (201, {"status": "accepted"}),
        (404, {"detail": "No such instruction for this agent."}),
        (201, {"status": "accepted"}),
        (400, {"hash": ["Does not match the result's content."]}),
        answers[5],
        (200, {"status": "already_received"}),
    ]
    assert answers[5][0] == 400 and "outcome" in answers[5][1]
    refusals = Counter(HistoryEvent.objects.filter(action="refused.result").values_list("actor", flat=True))
    assert refusals == {f"agent:{c.pk}": 1, f"agent:{d.pk}": 1}
    assert Instruction.objects.get(pk=fourth).status == "running"  # the forged one changed nothing


def test_one_failing_result_costs_the_others_nothing(world, monkeypatch):
    """A batch that fails is taken in one by one: each gets its own answer or its own error."""
    from scripting import kind as script_kind

    work = leased(world, 3, "failing")
    bad = work[1][1]
    real = script_kind.evidence_document

    def document(job, inst, stored, result, late):
        if str(inst.pk) == bad:
            raise RuntimeError("this one cannot be documented")
        return real(job, inst, stored, result, late)

    script = registry.get("script")
    monkeypatch.setitem(registry._KINDS, "script", dataclasses.replace(script, evidence_document=document))
    answers = ingest_results([(agent, body(inst_id)) for agent, inst_id in work])
    assert answers[0] == answers[2] == (201, {"status": "accepted"})
    assert isinstance(answers[1], RuntimeError)
    assert Instruction.objects.get(pk=bad).status == "running"  # rolled back, reported again later
    assert RmmEvidence.objects.count() == 2
    assert history.verify_chain().ok
