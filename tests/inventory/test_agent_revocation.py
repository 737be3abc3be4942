"""A revoked agent can lease nothing and report nothing more: its queued and running instructions
end aborted when it is revoked, recorded, and their jobs end aborted with them."""

import json

import pytest

from rmm.engine.models import Instruction
from rmm.history.models import HistoryEvent
from rmm.inventory import services as inventory
from scripting import services as scripting
from scripting.models import ScriptJob
from tests.helpers import approved_authority, approved_script, heartbeat, make_agent, report


@pytest.fixture
def busy_agent(caller, site, settings):
    """An agent running one instruction with another queued behind it (one at a time per asset),
    and another agent of the same site with queued work of its own."""
    settings.RMM_HEARTBEAT_MIN_SPACING_SECONDS = 0
    settings.RMM_MAX_RUNNING_PER_ASSET = 1
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    task = approved_authority(site, psa.user)
    script = approved_script(tech.user, boss.user)
    agent, auth = make_agent(site, "stolen")
    bystander, _ = make_agent(site, "bystander")
    jobs = [
        scripting.create_script_job(psa.user, script_id=script.pk, asset_id=asset_id, psa_task_id=task.pk)
        for asset_id in (agent.asset_id, agent.asset_id, bystander.asset_id)
    ]
    [leased] = heartbeat(auth)["instructions"]
    running = json.loads(leased["payload"])["instruction_id"]
    return agent, auth, jobs, running


def test_revoking_an_agent_aborts_its_queued_and_running_work(busy_agent, caller):
    agent, auth, jobs, running = busy_agent
    mine = list(Instruction.objects.filter(agent=agent).order_by("issued_at"))
    assert [inst.status for inst in mine] == ["running", "queued"] and str(mine[0].pk) == running

    assert inventory.revoke_agent(caller("root", "admin").user, agent, "laptop stolen") == 2

    for inst in mine:
        inst.refresh_from_db()
        assert (inst.status, inst.reason) == ("aborted", "agent revoked: laptop stolen")
        event = HistoryEvent.objects.get(action="instruction.aborted", subject_id=str(inst.pk))
        assert event.actor == "user:root" and event.payload["reason"] == inst.reason
    for job in jobs[:2]:
        job.refresh_from_db()
        assert (job.status, job.status_reason) == ("aborted", "agent revoked: laptop stolen")
    assert ScriptJob.objects.get(pk=jobs[2].pk).status == "queued"  # another agent's work goes on
    assert Instruction.objects.get(job_id=jobs[2].pk).status == "queued"
    # The revoked agent's result is refused: its credential no longer works.
    assert report(auth, running).status_code == 401


def test_a_revocation_refused_aborts_nothing(busy_agent, caller):
    agent, _, _, _ = busy_agent
    with pytest.raises(Exception, match="may not manage agents"):
        inventory.revoke_agent(caller("tech", "technician").user, agent, "no")
    assert set(Instruction.objects.filter(agent=agent).values_list("status", flat=True)) == {"running", "queued"}


def test_an_instruction_leased_while_the_agent_is_revoked_is_aborted_too(busy_agent, caller, monkeypatch):
    """The lease of a heartbeat that began before the revocation committed takes a queued
    instruction after the revocation listed it as queued: it must still end aborted."""
    from rmm.engine.services import stopping

    agent, auth, jobs, running = busy_agent
    queued = Instruction.objects.get(agent=agent, status="queued")
    end = stopping.end_instruction

    def leased_meanwhile(inst, from_status, to, actor, reason):
        if inst.pk == queued.pk and from_status == "queued":
            Instruction.objects.filter(pk=inst.pk).update(status="running")  # the racing lease commits
        return end(inst, from_status, to, actor, reason)

    monkeypatch.setattr(stopping, "end_instruction", leased_meanwhile)
    inventory.revoke_agent(caller("admin", "admin").user, agent, "stolen laptop")
    assert set(Instruction.objects.filter(agent=agent).values_list("status", flat=True)) == {"aborted"}
    assert HistoryEvent.objects.filter(action="instruction.aborted", subject_id=str(queued.pk)).count() == 1
    assert ScriptJob.objects.get(pk=queued.job_id).status == "aborted"
