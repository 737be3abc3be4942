"""Law 1: no job without upstream authority; and the PSA's upserts of that authority."""

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from rmm.authority import services as authority
from rmm.authority.models import PsaCase, PsaTask
from rmm.engine.models import Instruction
from rmm.history.models import HistoryEvent
from scripting.models import ScriptJob
from tests.helpers import approved_authority, approved_script, make_agent

JOBS = "/api/v1/script-jobs/"


@pytest.fixture
def world(caller, site):
    psa = caller("psa", "psa")
    tech = caller("tech", "technician")
    boss = caller("boss", "approver")
    agent, _auth = make_agent(site, "web-01")
    script = approved_script(tech.user, boss.user)
    return psa, agent, script


def refusals():
    return list(HistoryEvent.objects.filter(action="refused.script_job.create").order_by("sequence"))


def assert_refused(psa, agent, script, psa_task_id, problem, *, omit_task=False):
    """POST a job on this authority: 400 naming psa_task_id, nothing written, the refusal recorded."""
    before = len(refusals())
    body = {"script": str(script.pk), "asset": str(agent.asset_id)}
    if not omit_task:
        body["psa_task_id"] = str(psa_task_id) if psa_task_id is not None else None
    r = psa.post(JOBS, body, format="json")
    assert r.status_code == 400, r.content
    assert r.json() == {"psa_task_id": [f"No authority: {problem}."]}
    assert ScriptJob.objects.count() == 0
    assert Instruction.objects.count() == 0
    assert not HistoryEvent.objects.filter(action="job.created").exists()
    after = refusals()
    assert len(after) == before + 1
    event = after[-1]
    assert event.actor == "user:psa"
    assert event.payload["reason"] == f"no authority: {problem}"
    assert event.payload["asset"] == str(agent.asset_id)
    assert event.payload["script"] == str(script.pk)
    assert event.site_id == agent.asset.site_id
    # Nothing to lease either.
    assert psa.get(JOBS).json()["count"] == 0


def test_control_an_approved_unexpired_task_covering_the_asset_creates_the_job(world, site):
    psa, agent, script = world
    task = approved_authority(site, psa.user, expires_at=timezone.now() + timedelta(hours=1))
    r = psa.post(
        JOBS, {"script": str(script.pk), "asset": str(agent.asset_id), "psa_task_id": str(task.pk)}, format="json"
    )
    assert r.status_code == 201, r.content
    assert r.json()["psa_task_id"] == str(task.pk)
    assert ScriptJob.objects.count() == 1
    assert Instruction.objects.count() == 1
    assert refusals() == []


def test_a_job_without_a_psa_task_is_refused(world):
    psa, agent, script = world
    assert_refused(psa, agent, script, None, "no PSA task given", omit_task=True)
    assert refusals()[-1].payload["psa_task_id"] is None


def test_a_job_with_a_null_psa_task_is_refused(world):
    psa, agent, script = world
    assert_refused(psa, agent, script, None, "no PSA task given")


def test_a_job_citing_an_unknown_task_is_refused(world):
    psa, agent, script = world
    assert_refused(psa, agent, script, uuid.uuid4(), "no such PSA task")


@pytest.mark.parametrize("status", ["open", "rejected", "closed"])
def test_a_case_that_is_not_approved_gives_no_authority(world, site, status):
    psa, agent, script = world
    task = approved_authority(site, psa.user, case_status=status)
    assert_refused(psa, agent, script, task.pk, f"PSA case is {status}, not approved")


@pytest.mark.parametrize("status", ["open", "rejected", "closed"])
def test_a_task_that_is_not_approved_gives_no_authority(world, site, status):
    psa, agent, script = world
    task = approved_authority(site, psa.user, task_status=status)
    assert_refused(psa, agent, script, task.pk, f"PSA task is {status}, not approved")


def test_a_task_whose_case_was_closed_after_approval_gives_no_authority(world, site):
    psa, agent, script = world
    task = approved_authority(site, psa.user)
    case = task.case
    r = psa.put(
        f"/api/v1/psa/cases/{case.pk}/", {"title": case.title, "status": "closed", "site": site.name}, format="json"
    )
    assert r.status_code == 200, r.content
    assert_refused(psa, agent, script, task.pk, "PSA case is closed, not approved")


def test_an_expired_case_gives_no_authority(world, site):
    psa, agent, script = world
    expired = timezone.now() - timedelta(minutes=1)
    task = approved_authority(site, psa.user, expires_at=expired)
    assert_refused(psa, agent, script, task.pk, f"PSA case authority expired at {expired.isoformat()}")


def test_an_expired_task_gives_no_authority(world, site):
    psa, agent, script = world
    case_task = approved_authority(site, psa.user, expires_at=timezone.now() + timedelta(days=1))
    expired = timezone.now() - timedelta(seconds=1)
    task = authority.upsert_task(
        psa.user, uuid.uuid4(), case_id=case_task.case_id, title="late", status="approved", expires_at=expired
    )
    assert_refused(psa, agent, script, task.pk, f"PSA task authority expired at {expired.isoformat()}")


def test_a_case_for_another_site_does_not_cover_the_asset(world, other_site):
    psa, agent, script = world
    task = approved_authority(other_site, psa.user)
    assert_refused(psa, agent, script, task.pk, "the asset is outside the PSA case's site")


def test_a_case_on_a_site_the_caller_may_not_see_does_not_cover_the_asset(caller, site, other_site):
    psa_all = caller("psa", "psa")
    scoped = caller("psa-alpha", "psa", sites=[site])
    tech = caller("tech", "technician")
    boss = caller("boss", "approver")
    agent, _ = make_agent(site, "web-01")
    script = approved_script(tech.user, boss.user)
    task = approved_authority(other_site, psa_all.user)
    r = scoped.post(
        JOBS, {"script": str(script.pk), "asset": str(agent.asset_id), "psa_task_id": str(task.pk)}, format="json"
    )
    assert r.status_code == 400
    # Told as if the task did not exist (Law 7); the history keeps the real reason.
    assert r.json() == {"psa_task_id": ["No authority: no such PSA task."]}
    assert ScriptJob.objects.count() == 0 and Instruction.objects.count() == 0
    assert refusals()[-1].actor == "user:psa-alpha"
    assert refusals()[-1].payload["reason"] == "no authority: the asset is outside the PSA case's site"


def test_the_service_itself_refuses_without_authority(world):
    """Law 1 is enforced where jobs are created, not in views: call the service directly."""
    from rmm.core.errors import InvalidInput
    from scripting import services as scripting

    psa, agent, script = world
    with pytest.raises(InvalidInput) as exc:
        scripting.create_script_job(psa.user, script_id=script.pk, asset_id=agent.asset_id, psa_task_id=None)
    assert exc.value.field == "psa_task_id"
    assert ScriptJob.objects.count() == 0
    assert len(refusals()) == 1


# --- PSA upserts -----------------------------------------------------------------------------


def case_body(site_, **over):
    return {"title": "Patch Tuesday", "status": "approved", "site": site_.name, **over}


def test_psa_put_creates_then_updates_a_case(caller, site):
    psa = caller("psa", "psa")
    case_id = uuid.uuid4()
    r = psa.put(f"/api/v1/psa/cases/{case_id}/", case_body(site, status="open"), format="json")
    assert r.status_code == 201, r.content
    assert r.json()["id"] == str(case_id)
    assert r.json()["status"] == "open"
    assert r.json()["site"] == "alpha"
    r = psa.put(f"/api/v1/psa/cases/{case_id}/", case_body(site, title="Patch Tuesday (Feb)"), format="json")
    assert r.status_code == 200, r.content
    assert r.json()["status"] == "approved"
    assert r.json()["title"] == "Patch Tuesday (Feb)"
    assert PsaCase.objects.count() == 1
    assert psa.get(f"/api/v1/psa/cases/{case_id}/").json()["status"] == "approved"
    created, updated = HistoryEvent.objects.filter(subject_id=str(case_id)).order_by("sequence")
    assert created.action == "psa_case.created" and created.payload["before"] is None
    assert updated.action == "psa_case.updated"
    assert updated.payload["before"]["status"] == "open" and updated.payload["after"]["status"] == "approved"


def test_psa_put_creates_then_updates_a_task(caller, site):
    psa = caller("psa", "psa")
    case_id, task_id = uuid.uuid4(), uuid.uuid4()
    assert psa.put(f"/api/v1/psa/cases/{case_id}/", case_body(site), format="json").status_code == 201
    body = {"case": str(case_id), "title": "Run fix", "status": "open"}
    r = psa.put(f"/api/v1/psa/tasks/{task_id}/", body, format="json")
    assert r.status_code == 201, r.content
    assert r.json()["case"] == str(case_id) and r.json()["status"] == "open"
    r = psa.put(f"/api/v1/psa/tasks/{task_id}/", {**body, "status": "approved"}, format="json")
    assert r.status_code == 200
    assert PsaTask.objects.get(pk=task_id).status == "approved"


def test_psa_case_with_a_bad_status_is_refused(caller, site):
    psa = caller("psa", "psa")
    case_id = uuid.uuid4()
    r = psa.put(f"/api/v1/psa/cases/{case_id}/", case_body(site, status="maybe"), format="json")
    assert r.status_code == 400
    assert list(r.json()) == ["status"]
    assert not PsaCase.objects.exists()


def test_psa_case_on_an_unknown_site_is_refused(caller, site):
    psa = caller("psa", "psa")
    r = psa.put(f"/api/v1/psa/cases/{uuid.uuid4()}/", case_body(site, site="nowhere"), format="json")
    assert r.status_code == 400
    assert r.json() == {"site": ["No site named 'nowhere' that you may use."]}
    assert not PsaCase.objects.exists()


def test_psa_case_on_a_site_the_psa_is_not_granted_is_refused(caller, site, other_site):
    psa = caller("psa-alpha", "psa", sites=[site])
    r = psa.put(f"/api/v1/psa/cases/{uuid.uuid4()}/", case_body(other_site), format="json")
    assert r.status_code == 400
    assert r.json() == {"site": ["No site named 'beta' that you may use."]}
    assert not PsaCase.objects.exists()


def test_a_technician_may_not_upsert_authority(caller, site):
    psa = caller("psa", "psa")
    tech = caller("tech", "technician")
    case_id = uuid.uuid4()
    r = tech.put(f"/api/v1/psa/cases/{case_id}/", case_body(site), format="json")
    assert r.status_code == 403
    assert r.json() == {"detail": "Your role may not manage authority."}
    assert not PsaCase.objects.exists()
    refusal = HistoryEvent.objects.get(action="refused.psa_case.upsert")
    assert refusal.actor == "user:tech"

    # Nor flip an existing case to approved.
    assert psa.put(f"/api/v1/psa/cases/{case_id}/", case_body(site, status="open"), format="json").status_code == 201
    r = tech.put(f"/api/v1/psa/cases/{case_id}/", case_body(site), format="json")
    assert r.status_code == 403
    assert PsaCase.objects.get(pk=case_id).status == "open"

    r = tech.put(
        f"/api/v1/psa/tasks/{uuid.uuid4()}/", {"case": str(case_id), "title": "t", "status": "approved"}, format="json"
    )
    assert r.status_code == 403
    assert not PsaTask.objects.exists()
    assert HistoryEvent.objects.filter(action="refused.psa_task.upsert", actor="user:tech").count() == 1


def test_a_task_for_an_unknown_case_is_refused(caller):
    psa = caller("psa", "psa")
    r = psa.put(
        f"/api/v1/psa/tasks/{uuid.uuid4()}/",
        {"case": str(uuid.uuid4()), "title": "t", "status": "approved"},
        format="json",
    )
    assert r.status_code == 400
    assert r.json() == {"case": ["No such PSA case."]}
    assert not PsaTask.objects.exists()


def test_a_task_cannot_move_to_another_case(caller, site):
    psa = caller("psa", "psa")
    task = approved_authority(site, psa.user)
    other = approved_authority(site, psa.user).case
    r = psa.put(
        f"/api/v1/psa/tasks/{task.pk}/", {"case": str(other.pk), "title": "t", "status": "approved"}, format="json"
    )
    assert r.status_code == 400
    assert r.json() == {"case": ["A task cannot move to another case."]}
    assert PsaTask.objects.get(pk=task.pk).case_id == task.case_id


# --- authority must still hold when a waiting job is approved ------------------------------


@pytest.mark.parametrize("withdraw", ["task closed", "case rejected", "task expired"])
def test_approving_a_job_whose_authority_was_withdrawn_issues_nothing(caller, site, withdraw):
    """Law 1 at the moment work becomes executable: no signed instruction on withdrawn authority."""
    psa = caller("psa", "psa")
    tech = caller("tech", "technician")
    boss = caller("boss", "approver")
    agent, _ = make_agent(site, "web-01")
    script = approved_script(tech.user, boss.user, requires_approval=True)
    task = approved_authority(site, psa.user)
    r = tech.post(
        JOBS, {"script": str(script.pk), "asset": str(agent.asset_id), "psa_task_id": str(task.pk)}, format="json"
    )
    assert r.status_code == 201 and r.json()["status"] == "awaiting_approval"
    job_id = r.json()["id"]

    if withdraw == "task closed":
        authority.upsert_task(psa.user, task.pk, case_id=task.case_id, title=task.title, status="closed")
        problem = "PSA task is closed, not approved"
    elif withdraw == "case rejected":
        case = task.case
        authority.upsert_case(psa.user, case.pk, title=case.title, status="rejected", site_name=site.name)
        problem = "PSA case is rejected, not approved"
    else:
        expired = timezone.now() - timedelta(seconds=1)
        authority.upsert_task(
            psa.user, task.pk, case_id=task.case_id, title=task.title, status="approved", expires_at=expired
        )
        problem = f"PSA task authority expired at {expired.isoformat()}"

    r = boss.post(f"{JOBS}{job_id}/approve/")
    assert r.status_code == 409, r.content
    assert r.json() == {"psa_task_id": [f"No authority: {problem}."]}
    job = ScriptJob.objects.get(pk=job_id)
    assert job.status == "awaiting_approval" and job.decided_by_id is None
    assert Instruction.objects.count() == 0
    refusal = HistoryEvent.objects.get(action="refused.job.approve")
    assert refusal.actor == "user:boss"
    assert refusal.payload["reason"] == f"no authority: {problem}"
