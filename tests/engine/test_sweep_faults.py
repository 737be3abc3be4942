"""One storage error does not stop the minute's sweep: each instruction and each step fails alone,
is logged, and the rest goes on; what failed is done at the next sweep once the store is back."""

import json
import logging
from datetime import timedelta

import pytest
from django.utils import timezone

from evidence.models import RmmEvidence
from rmm.engine import services as engine
from rmm.engine.models import Instruction
from scripting import services as scripting
from scripting.models import ScriptJob
from tests.helpers import approved_authority, approved_script, heartbeat, make_agent


@pytest.fixture
def world(caller, site, other_site, settings, django_capture_on_commit_callbacks):
    """Overdue leases, a batch whose later waves' task was lost, and queued work whose PSA task expires."""
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    script = approved_script(tech.user, boss.user)
    task = approved_authority(site, psa.user)
    agents = [make_agent(site, f"s{n:02d}") for n in range(7)]
    settings.RMM_WAVE_SIZE = 5
    with django_capture_on_commit_callbacks():  # the later waves' task is lost
        r = psa.post(
            "/api/v1/script-jobs/batch/",
            {"script": str(script.pk), "psa_task_id": str(task.pk), "assets": [str(a.asset_id) for a, _ in agents]},
            format="json",
        )
    assert r.status_code == 201, r.content
    leased = [heartbeat(auth)["instructions"][0] for _, auth in agents[:2]]  # two run, and are never reported
    expiring = approved_authority(other_site, psa.user, expires_at=timezone.now() + timedelta(minutes=5))
    far = make_agent(other_site, "far")[0]
    doomed = scripting.create_script_job(psa.user, script_id=script.pk, asset_id=far.asset_id, psa_task_id=expiring.pk)
    batch = [job["id"] for job in r.json()["jobs"]]
    return {"leased": [json.loads(i["payload"])["instruction_id"] for i in leased], "batch": batch, "doomed": doomed}


def test_a_store_that_refuses_writes_stops_no_other_row_and_no_other_step(world, evidence_store, caplog):
    later = timezone.now() + timedelta(minutes=11)  # past the leases, the task's expiry and the lost task's grace
    evidence_store.refuse()
    with caplog.at_level(logging.ERROR, logger="rmm.engine.services"):
        engine.sweep(later)
    # Each overdue instruction was tried, failed alone (logged), and is left as it was for the next sweep.
    for instruction_id in world["leased"]:
        assert f"sweep: instruction {instruction_id} could not be marked lost" in caplog.text
        assert Instruction.objects.get(pk=instruction_id).status == "running"
    # Stopping the expired case's work failed too (its abort needs evidence), logged; the job waits.
    assert f"stopping the work of expired PSA case {world['doomed'].psa_task.case_id} failed" in caplog.text
    assert ScriptJob.objects.get(pk=world["doomed"].pk).status == "queued"
    # The step after them went on: the lost later waves were issued.
    assert Instruction.objects.filter(job_id__in=world["batch"]).count() == 7

    evidence_store.restore()
    engine.sweep(later)
    for instruction_id in world["leased"]:
        inst = Instruction.objects.get(pk=instruction_id)
        assert inst.status == "lost"
        assert RmmEvidence.objects.filter(related_id=inst.job_id).count() == 1
    doomed = ScriptJob.objects.get(pk=world["doomed"].pk)
    assert (doomed.status, doomed.status_reason) == ("aborted", "authority withdrawn: PSA case expired")
    assert RmmEvidence.objects.filter(related_id=doomed.pk).count() == 1
