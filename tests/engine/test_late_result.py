"""A result that arrives after the sweep declared its instruction lost is kept: stored with its
evidence, recorded as late in the history, told to the PSA, and answered so the agent lets it go
(issue 12, item 3)."""

from __future__ import annotations

import json
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.test import Client
from django.utils import timezone

from evidence.models import RmmEvidence
from evidence.services import read_blob
from rmm.engine import services as engine
from rmm.engine.models import Instruction
from rmm.history.models import HistoryEvent
from rmm.history.services import verify_chain
from rmm_agent.results import make_result
from scripting import services as scripting
from scripting.models import ScriptJob
from tests.e2e.psa import PsaReceiver
from tests.helpers import approved_authority, approved_script, make_agent, post_json


@pytest.fixture
def psa_receiver(settings):
    receiver = PsaReceiver()
    settings.RMM_PSA_WEBHOOK_URL = receiver.url
    settings.RMM_PSA_WEBHOOK_SECRET = receiver.secret
    settings.RMM_TASKS_SYNC = True
    yield receiver
    receiver.close()


@pytest.fixture
def world(caller, site, psa_receiver):
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    agent, auth = make_agent(site, "web-01")
    task = approved_authority(site, psa.user)
    script = approved_script(tech.user, boss.user)

    def job():
        return scripting.create_script_job(psa.user, script_id=script.pk, asset_id=agent.asset_id, psa_task_id=task.pk)

    return SimpleNamespace(psa=psa, auth=auth, job=job, receiver=psa_receiver)


def lease(world) -> str:
    beat = post_json(Client(), "/api/v1/agent/heartbeat/", {"capacity": 1}, HTTP_AUTHORIZATION=world.auth)
    [envelope] = beat.json()["instructions"]
    return json.loads(envelope["payload"])["instruction_id"]


def deliver(world, body):
    return post_json(
        Client(raise_request_exception=False), "/api/v1/agent/results/", body, HTTP_AUTHORIZATION=world.auth
    )


def sweep_later(hours: float = 2) -> int:
    return engine.sweep(timezone.now() + timedelta(hours=hours))


def test_a_result_after_the_sweep_is_kept_as_a_late_result(world, django_capture_on_commit_callbacks):
    job = world.job()
    instruction_id = lease(world)
    with django_capture_on_commit_callbacks(execute=True):
        assert sweep_later() == 2  # the instruction lost, and its agent, unseen for two hours, offline
    assert ScriptJob.objects.get(pk=job.pk).status == "lost"
    lost_told = world.receiver.wait_for(str(job.pk))
    assert lost_told["body"]["event"] == "job.finished"

    body = make_result(instruction_id, "completed", exit_code=0, stdout=b"did it\x00\n")
    with django_capture_on_commit_callbacks(execute=True):
        answer = deliver(world, body)
    assert answer.status_code == 201, answer.content
    assert answer.json()["status"] == "accepted_late"

    # The job stays lost; what the endpoint did is stored with it.
    shown = world.psa.get(f"/api/v1/script-jobs/{job.pk}/").json()
    assert shown["status"] == "lost"
    assert shown["result"]["stdout"] == "did it\\x00\n"
    assert shown["result"]["hash"] == body["hash"]
    assert len(shown["evidence"]) == 2
    late = RmmEvidence.objects.filter(related_id=job.pk).order_by("captured_at").last()
    document = json.loads(read_blob(late))
    assert document["result"]["late"] is True
    assert document["result"]["hash"] == body["hash"]
    assert document["result"]["outcome"] == "completed"
    assert document["job"]["status"] == "lost"

    [event] = HistoryEvent.objects.filter(action="instruction.late_result")
    assert event.subject_id == instruction_id
    assert event.payload["outcome"] == "completed"
    assert event.payload["exit_code"] == 0
    assert event.payload["result_hash"] == body["hash"]
    assert event.payload["status"] == "lost"

    told = [item["body"] for item in world.receiver.received if item["body"].get("event") == "job.late_result"]
    assert len(told) == 1 and world.receiver.received[-1]["signed"]
    assert told[0]["job_id"] == str(job.pk)
    assert told[0]["status"] == "lost"
    assert told[0]["late_result"] == {
        "instruction_id": instruction_id,
        "outcome": "completed",
        "exit_code": 0,
        "hash": body["hash"],
        "evidence": {"id": str(late.pk), "type": "script_result", "hash": late.hash},
    }
    assert {"id": str(late.pk), "type": "script_result", "hash": late.hash} in told[0]["evidence"]
    assert verify_chain().ok

    # The agent resends it (its answer was lost): the same answer, nothing stored twice.
    with django_capture_on_commit_callbacks(execute=True):
        again = deliver(world, body)
    assert again.status_code == 200
    assert again.json()["status"] == "already_received"
    assert RmmEvidence.objects.filter(related_id=job.pk).count() == 2
    assert HistoryEvent.objects.filter(action="instruction.late_result").count() == 1
    assert len([i for i in world.receiver.received if i["body"].get("event") == "job.late_result"]) == 1

    # A different late result for the same instruction is a conflict.
    other = deliver(world, make_result(instruction_id, "completed", exit_code=1))
    assert other.status_code == 409


def test_a_result_for_an_instruction_no_agent_ever_leased_is_refused(world):
    job = world.job()
    Instruction.objects.filter(job_id=job.pk).update(not_after=timezone.now() - timedelta(seconds=1))
    assert sweep_later(0) == 1
    inst = Instruction.objects.get(job_id=job.pk)
    assert inst.status == "lost" and inst.leased_at is None
    answer = deliver(world, make_result(str(inst.pk), "completed", exit_code=0))
    assert answer.status_code == 409
    assert HistoryEvent.objects.filter(action="refused.result", subject_id=str(inst.pk)).exists()
    assert RmmEvidence.objects.filter(related_id=job.pk).count() == 1
    assert not ScriptJob.objects.filter(pk=job.pk, result__isnull=False).exists()
