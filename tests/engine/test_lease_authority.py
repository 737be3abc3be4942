"""Authority is re-checked when an instruction is leased, not only by the minute's sweep: work
whose PSA case or task expired, or was withdrawn behind the services' back, is never handed to an
agent; it ends aborted, as the sweep would end it, with the reason in the history."""

from datetime import timedelta

import pytest
from django.utils import timezone

from rmm.authority.models import PsaCase, PsaTask
from rmm.engine.models import Instruction
from rmm.history.models import HistoryEvent
from scripting import services as scripting
from scripting.models import ScriptJob
from tests.helpers import approved_authority, approved_script, heartbeat, make_agent


@pytest.fixture
def queued(caller, site, settings):
    settings.RMM_HEARTBEAT_MIN_SPACING_SECONDS = 0
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    agent, auth = make_agent(site)
    task = approved_authority(site, psa.user)
    script = approved_script(tech.user, boss.user)
    job = scripting.create_script_job(psa.user, script_id=script.pk, asset_id=agent.asset_id, psa_task_id=task.pk)
    return job, task, auth


def aborted_at_lease(job, auth, words: str) -> None:
    answer = heartbeat(auth)
    assert answer["instructions"] == []  # never handed out
    inst = Instruction.objects.get(job_id=job.pk)
    assert inst.status == "aborted" and inst.leased_at is None
    assert inst.reason.startswith("authority withdrawn: ") and words in inst.reason
    assert inst.reason.endswith("(found at lease)")
    event = HistoryEvent.objects.get(action="instruction.aborted", subject_id=str(inst.pk))
    assert event.payload["reason"] == inst.reason and event.actor == "system"
    job.refresh_from_db()
    assert (job.status, job.status_reason) == ("aborted", inst.reason)
    assert not HistoryEvent.objects.filter(action="instruction.leased", subject_id=str(inst.pk)).exists()


def test_a_task_that_expired_since_the_last_sweep_is_not_leased(queued):
    job, task, auth = queued
    PsaTask.objects.filter(pk=task.pk).update(expires_at=timezone.now() - timedelta(seconds=1))  # no sweep ran
    aborted_at_lease(job, auth, "PSA task authority expired at")


def test_a_case_that_expired_since_the_last_sweep_is_not_leased(queued):
    job, task, auth = queued
    PsaCase.objects.filter(pk=task.case_id).update(expires_at=timezone.now() - timedelta(seconds=1))
    aborted_at_lease(job, auth, "PSA case authority expired at")


@pytest.mark.parametrize("model", ["case", "task"])
def test_authority_withdrawn_without_the_withdrawal_reaching_the_work_is_not_leased(queued, model):
    """As when a withdrawal committed between a job's check and its queueing, or its stop failed."""
    job, task, auth = queued
    if model == "case":
        PsaCase.objects.filter(pk=task.case_id).update(status="closed")
    else:
        PsaTask.objects.filter(pk=task.pk).update(status="rejected")
    aborted_at_lease(job, auth, f"PSA {model} is {'closed' if model == 'case' else 'rejected'}, not approved")


def test_a_case_moved_to_another_site_is_not_leased(queued, other_site):
    job, task, auth = queued
    PsaCase.objects.filter(pk=task.case_id).update(site=other_site)
    aborted_at_lease(job, auth, "outside the PSA case's site")


def test_authority_that_still_holds_is_leased(queued):
    job, task, auth = queued
    PsaTask.objects.filter(pk=task.pk).update(expires_at=timezone.now() + timedelta(hours=1))
    assert len(heartbeat(auth)["instructions"]) == 1
    assert ScriptJob.objects.get(pk=job.pk).status == "running"
