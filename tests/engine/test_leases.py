"""Leases expire: an instruction nobody reported on becomes lost, is never re-run, and a late
result cannot revive it."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from evidence.models import RmmEvidence
from rmm.engine import services as engine
from rmm.engine.models import Instruction
from scripting import services as scripting
from tests.helpers import approved_authority, heartbeat, make_agent, report


@pytest.fixture
def queued_job(caller, site):
    psa, tech, approver = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    agent, auth = make_agent(site)
    task = approved_authority(site, psa.user)
    script = scripting.create_script(tech.user, name="slow", language="sh", content="sleep 1\n", timeout_seconds=10)
    scripting.approve_script(script, approver.user)
    job = scripting.create_script_job(psa.user, script_id=script.pk, asset_id=agent.asset_id, psa_task_id=task.pk)
    return job, auth


def test_an_unreported_lease_ends_lost_and_is_not_leased_again(queued_job, settings):
    job, auth = queued_job
    payload = json.loads(heartbeat(auth)["instructions"][0]["payload"])
    inst = Instruction.objects.get(pk=payload["instruction_id"])
    assert inst.lease_expires_at == inst.leased_at + timedelta(seconds=10 + settings.RMM_LEASE_GRACE_SECONDS)

    assert engine.sweep(now=inst.lease_expires_at - timedelta(seconds=1)) == 0
    assert engine.sweep(now=inst.lease_expires_at + timedelta(seconds=1)) == 1
    job.refresh_from_db()
    assert job.status == "lost"
    assert "never reported" in job.status_reason
    assert heartbeat(auth)["instructions"] == []  # never re-run silently
    evidence = RmmEvidence.objects.get(related_id=job.pk)
    assert evidence.evidence_type == "script_result"

    late = report(auth, payload["instruction_id"])  # kept as a late result: tests/engine/test_late_result.py
    assert (late.status_code, late.json()["status"]) == (201, "accepted_late")
    job.refresh_from_db()
    assert job.status == "lost"


def test_an_instruction_never_leased_in_time_ends_lost(queued_job):
    job, auth = queued_job
    inst = Instruction.objects.get(job_id=job.pk)
    assert engine.sweep(now=inst.not_after + timedelta(seconds=1)) == 1
    job.refresh_from_db()
    assert job.status == "lost"
    assert "in time" in job.status_reason
    assert heartbeat(auth)["instructions"] == []


def test_sweep_leaves_live_leases_alone(queued_job):
    job, auth = queued_job
    heartbeat(auth)
    assert engine.sweep(now=timezone.now()) == 0
    job.refresh_from_db()
    assert job.status == "running"
