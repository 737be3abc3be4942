"""Structured results and reboots on the server: a step's JSON document checked, stored on its
instruction, read by its kind (which may fail the step from it) and in its evidence; a step that
reboots holds the job's next step until its agent comes back, marks the agent rebooting (not
offline) and, when it never comes back within the grace, ends the job lost with that reason. A
step that reboots goes only to an agent that said it can."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from evidence import services as evidence_services
from evidence.models import RmmEvidence
from rmm.core.errors import InvalidInput
from rmm.engine import services as engine
from rmm.engine.models import Instruction
from rmm.history.models import HistoryEvent
from rmm.inventory import services as inventory
from rmm.inventory.models import Agent
from rmm_agent.protocol import CAPABILITIES, MAX_STRUCTURED_DEPTH
from rmm_agent.results import make_result
from scripting import services as scripting
from scripting.models import ScriptJob
from tests.engine.test_result_containment import evidence_document, leased, send  # noqa: F401 - a fixture
from tests.helpers import approved_authority, approved_script, heartbeat, make_agent, post_json
from tests.scripting.test_script_flow import setup  # noqa: F401 - the fixture leased uses
from tests.stepkind.jobs import create_step_job
from tests.stepkind.models import StepJob, StepResult

V2 = {"capabilities": list(CAPABILITIES)}


@pytest.fixture
def world(site, caller):
    psa = caller("psa", "psa")
    agent, auth = make_agent(site)
    heartbeat(auth, **V2)  # says what it can do
    return psa, agent, auth, approved_authority(site, psa.user)


def leased_one(auth, **body) -> dict:
    [envelope] = heartbeat(auth, **V2, **body)["instructions"]
    return json.loads(envelope["payload"])


def documents(job) -> list[dict]:
    return [
        json.loads(evidence_services.read_blob(record))
        for record in RmmEvidence.objects.filter(related_id=job.pk).order_by("history_sequence")
    ]


def test_a_structured_result_is_stored_read_by_the_kind_and_in_the_evidence(world):
    psa, agent, auth, task = world
    job = create_step_job(psa.user, asset=agent.asset, task=task, steps=1)
    payload = leased_one(auth)
    r = send(auth, make_result(payload["instruction_id"], "completed", exit_code=0, structured={"found": 0}))
    assert r.status_code == 201, r.content
    inst = Instruction.objects.get(pk=payload["instruction_id"])
    assert (inst.status, inst.structured) == ("succeeded", {"found": 0})
    assert StepResult.objects.get(job=job).structured == {"found": 0}
    [document] = documents(job)
    assert document["result"]["structured"] == {"found": 0}


def test_the_kind_fails_a_step_from_its_document(world):
    psa, agent, auth, task = world
    job = create_step_job(psa.user, asset=agent.asset, task=task, steps=2)
    payload = leased_one(auth)
    r = send(auth, make_result(payload["instruction_id"], "completed", exit_code=0, structured={"found": 2}))
    assert r.status_code == 201, r.content
    job.refresh_from_db()
    assert (job.status, job.status_reason) == ("failed", "step 1 of 2 failed: found 2")
    event = HistoryEvent.objects.filter(action="instruction.result").last()
    assert (event.payload["status"], event.payload["reason"]) == ("failed", "found 2")


def test_an_unusable_document_fails_the_step_it_is_never_passed_silently(world):
    psa, agent, auth, task = world
    job = create_step_job(psa.user, asset=agent.asset, task=task, steps=1)
    payload = leased_one(auth)
    body = make_result(payload["instruction_id"], "completed", exit_code=0, structured_error="not JSON")
    assert send(auth, body).status_code == 201
    job.refresh_from_db()
    assert (job.status, job.status_reason) == ("failed", "its structured result is unusable: not JSON")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("structured", "a string"),
        ("structured", {"a": "\x00"}),
        ("structured", json.loads("[" * (MAX_STRUCTURED_DEPTH + 1) + "]" * (MAX_STRUCTURED_DEPTH + 1))),
        ("structured_error", 3),
        ("reboot", "yes"),
    ],
)
def test_an_unusable_field_is_refused_by_name(world, field, value):
    psa, agent, auth, task = world
    create_step_job(psa.user, asset=agent.asset, task=task, steps=1)
    payload = leased_one(auth)
    body = make_result(payload["instruction_id"], "completed", exit_code=0)
    body[field] = value
    r = send(auth, body)
    assert r.status_code == 400
    assert field in r.json()
    assert Instruction.objects.get(pk=payload["instruction_id"]).status == "running"


def test_a_v1_agent_is_sent_no_reboot_step_and_keeps_working(site, caller):
    psa = caller("psa", "psa")
    agent, auth = make_agent(site)
    heartbeat(auth)  # a v1 agent names no capabilities
    task = approved_authority(site, psa.user)
    with pytest.raises(InvalidInput, match="cannot reboot"):
        create_step_job(psa.user, asset=agent.asset, task=task, steps=2, reboot_step=0)
    assert not StepJob.objects.exists()
    # a later step that reboots is not issued either: the job ends, naming why
    job = create_step_job(psa.user, asset=agent.asset, task=task, steps=2, reboot_step=1)
    [envelope] = heartbeat(auth)["instructions"]
    payload = json.loads(envelope["payload"])
    assert "reboot" not in payload
    r = post_json(
        Client(),
        "/api/v1/agent/results/",
        make_result(payload["instruction_id"], "completed", exit_code=0),
        HTTP_AUTHORIZATION=auth,
    )
    assert r.status_code == 201
    job.refresh_from_db()
    assert job.status == "aborted"
    assert "step 2 of 2 not issued" in job.status_reason and "cannot reboot" in job.status_reason


def test_capabilities_are_stored_once_and_kept_when_an_agent_says_none(world):
    _psa, agent, auth, _task = world
    assert Agent.objects.get(pk=agent.pk).capabilities == ",".join(sorted(CAPABILITIES))
    heartbeat(auth, capabilities=["reboot", "made-up", 3])
    assert Agent.objects.get(pk=agent.pk).capabilities == "reboot"
    heartbeat(auth)
    assert Agent.objects.get(pk=agent.pk).capabilities == "reboot"


def reboot_step_done(world, steps=3):
    """A step job whose step 0 reboots, its result in: (job, the step's instruction id)."""
    psa, agent, auth, task = world
    job = create_step_job(psa.user, asset=agent.asset, task=task, steps=steps, reboot_step=0)
    payload = leased_one(auth)
    assert payload["reboot"] == "now"
    r = send(auth, make_result(payload["instruction_id"], "completed", exit_code=0, reboot=True))
    assert r.status_code == 201, r.content
    return job, payload["instruction_id"]


def test_after_a_reboot_the_next_step_waits_for_the_agent_to_come_back(world):
    _psa, agent, auth, _task = world
    job, first = reboot_step_done(world)
    agent.refresh_from_db()
    assert agent.rebooting_until is not None
    held = Instruction.objects.get(job_id=job.pk, step=1)
    assert held.status == "queued"
    assert heartbeat(auth, **V2)["instructions"] == []  # still the same boot, as far as the server knows
    payload = leased_one(auth, rebooted=first)
    assert payload["instruction_id"] == str(held.pk)
    agent.refresh_from_db()
    assert agent.rebooting_until is None
    assert HistoryEvent.objects.filter(action="agent.came_back", subject_id=str(agent.pk)).count() == 1
    assert HistoryEvent.objects.filter(action="agent.rebooting", subject_id=str(agent.pk)).count() == 1
    heartbeat(auth, **V2, rebooted=first)  # a repeat changes nothing
    assert HistoryEvent.objects.filter(action="agent.came_back").count() == 1


def test_a_rebooting_agent_is_not_marked_offline_within_its_grace(world, settings):
    _psa, agent, _auth, _task = world
    reboot_step_done(world)
    later = timezone.now() + timedelta(seconds=settings.RMM_AGENT_OFFLINE_SECONDS + 1)
    assert inventory.mark_presence(later) == 0
    assert Agent.objects.get(pk=agent.pk).offline_since is None


def test_a_reboot_that_never_comes_back_ends_the_job_lost_with_that_reason(world, settings):
    _psa, agent, auth, _task = world
    job, _first = reboot_step_done(world)
    engine.sweep(timezone.now())  # within the grace: nothing
    assert StepJob.objects.get(pk=job.pk).status == "running"
    engine.sweep(timezone.now() + timedelta(seconds=settings.RMM_REBOOT_GRACE_SECONDS + 1))
    job.refresh_from_db()
    reason = f"the endpoint did not come back from its reboot within {settings.RMM_REBOOT_GRACE_SECONDS} s"
    assert (job.status, job.status_reason) == ("lost", f"step 2 of 3 lost: {reason}")
    held = Instruction.objects.get(job_id=job.pk, step=1)
    assert (held.status, held.reason) == ("lost", reason)
    assert Agent.objects.get(pk=agent.pk).rebooting_until is None
    assert [doc["job"]["status"] for doc in documents(job)] == ["running", "lost"]
    assert HistoryEvent.objects.filter(action="job.lost", subject_id=str(job.pk)).count() == 1
    assert heartbeat(auth, **V2, rebooted=str(_first))["instructions"] == []  # too late: nothing released


def test_a_reboot_step_that_failed_does_not_hold_the_job(world):
    psa, agent, auth, task = world
    job = create_step_job(psa.user, asset=agent.asset, task=task, steps=2, reboot_step=0, on_failure="continue")
    payload = leased_one(auth)
    send(auth, make_result(payload["instruction_id"], "completed", exit_code=1, reboot=False))
    assert Agent.objects.get(pk=agent.pk).rebooting_until is None
    assert leased_one(auth)["step"] == 1
    assert StepJob.objects.get(pk=job.pk).status == "running"


def test_a_script_job_s_structured_result_is_in_its_api_result_and_evidence(leased):  # noqa: F811
    psa, auth, instruction_id = leased  # leased by a v1 heartbeat: its results work alike
    scan = {"updates": [{"name": "openssl", "version": "3.0.15"}]}
    body = make_result(instruction_id, "completed", exit_code=0, structured=scan)
    assert send(auth, body).status_code == 201
    job = psa.get(f"/api/v1/script-jobs/{ScriptJob.objects.get().pk}/").json()
    assert job["result"]["structured"] == scan
    assert evidence_document(psa)["result"]["structured"] == scan


def test_a_step_held_for_a_reboot_is_no_wave_that_a_lost_task_s_waves_follow(
    world, site, caller, settings, django_capture_on_commit_callbacks
):
    psa, task = world[0], world[3]
    reboot_step_done(world)  # a step held until an hour and a day from now
    script = approved_script(caller("tech", "technician").user, caller("boss", "approver").user)
    assets = [make_agent(site, f"w{n}")[0].asset_id for n in range(2)]
    settings.RMM_WAVE_SIZE, settings.RMM_TASKS_SYNC = 1, True
    with django_capture_on_commit_callbacks():  # the later wave's task is lost
        jobs = scripting.create_script_jobs(psa.user, script_id=script.pk, psa_task_id=task.pk, asset_ids=assets)
    later = timezone.now() + timedelta(minutes=11)
    engine.sweep(later)
    issued = Instruction.objects.filter(job_id__in=[job.pk for job in jobs]).order_by("release_at")
    assert len(issued) == 2
    assert issued[1].release_at == later + timedelta(seconds=settings.RMM_WAVE_INTERVAL_SECONDS)


def test_the_api_shows_an_agent_rebooting_and_what_it_can_do(world, caller, site):
    _psa, agent, _auth, _task = world
    reboot_step_done(world)
    admin = caller("root", "admin")
    shown = admin.get(f"/api/v1/agents/{agent.pk}/").json()
    assert shown["capabilities"] == sorted(CAPABILITIES) and shown["rebooting_until"] is not None
    assert admin.get(f"/api/v1/assets/{agent.asset_id}/").json()["agent"]["rebooting"] is True
