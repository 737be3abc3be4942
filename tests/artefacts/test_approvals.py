"""Law 8: four eyes. Whoever wrote or requested something never decides it, by any path."""

import html
import re

import pytest
from django.test import Client
from django.utils.text import capfirst

from rmm.access import services as access_services
from rmm.core.errors import Conflict, Forbidden
from rmm.engine import services as engine
from rmm.engine.models import Instruction
from rmm.history.models import HistoryEvent
from scripting import services as scripting
from scripting.models import Script, ScriptJob
from tests.helpers import approved_authority, approved_script, make_agent, otp_login

SELF = {"detail": "You may not approve or reject your own work."}
NO_REASON = {"reason": ["A rejection needs a reason."]}


@pytest.fixture
def people(caller, site):
    """tech writes, boss and boss2 approve, psa requests; ``both`` is technician *and* approver."""
    tech = caller("tech", "technician")
    boss = caller("boss", "approver")
    boss2 = caller("boss2", "approver")
    psa = caller("psa", "psa")
    both = caller("both", "technician")
    access_services.ensure_user_with_role("both", "approver")
    both.user.refresh_from_db()  # the approver role made the user staff
    # A token issued before the user could approve is refused from then on: issue a new one.
    both.token = access_services.issue_token(both.user)
    both.client.credentials(HTTP_AUTHORIZATION=f"Bearer {both.token}")
    assert {g.name for g in both.user.groups.all()} == {"technician", "approver"}
    return tech, boss, boss2, psa, both


@pytest.fixture
def agent(site):
    agent, _auth = make_agent(site, "web-01")
    return agent


@pytest.fixture
def task(people, site):
    return approved_authority(site, people[3].user)


def write(client, name="hello", content="echo hello\n"):
    r = client.post("/api/v1/scripts/", {"name": name, "language": "sh", "content": content}, format="json")
    assert r.status_code == 201, r.content
    return Script.objects.get(pk=r.json()["id"])


def request_job(client, script, agent, task):
    r = client.post(
        "/api/v1/script-jobs/",
        {"script": str(script.pk), "asset": str(agent.asset_id), "psa_task_id": str(task.pk)},
        format="json",
    )
    assert r.status_code == 201, r.content
    return ScriptJob.objects.get(pk=r.json()["id"])


def refused(action, actor):
    return HistoryEvent.objects.filter(action=f"refused.{action}", actor=f"user:{actor}")


def unchanged_script(script, status="pending"):
    script.refresh_from_db()
    assert script.approval_status == status
    if status == "pending":
        assert script.decided_by_id is None and script.decided_at is None


# --- script versions over the API -----------------------------------------------------------


@pytest.mark.parametrize("author_name", ["both", "admin"])
def test_an_author_may_not_approve_or_reject_their_own_script(people, caller, author_name):
    author = people[4] if author_name == "both" else caller("admin", "admin")
    script = write(author)
    r = author.post(f"/api/v1/scripts/{script.pk}/approve/")
    assert r.status_code == 403
    assert r.json() == SELF
    unchanged_script(script)
    r = author.post(f"/api/v1/scripts/{script.pk}/reject/", {"reason": "changed my mind"}, format="json")
    assert r.status_code == 403
    assert r.json() == SELF
    unchanged_script(script)
    for action in ("script.approve", "script.reject"):
        event = refused(action, author_name).get()
        assert event.payload["reason"] == "self-approval"
        assert event.subject_id == str(script.pk)
    assert not HistoryEvent.objects.filter(action__in=["script.approved", "script.rejected"]).exists()


def test_a_new_version_by_the_same_author_is_still_theirs(people):
    """Four eyes holds per version: v2 by ``both`` cannot be approved by ``both`` even though v1 was approved."""
    tech, boss, _boss2, _psa, both = people
    v1 = write(both)
    assert boss.post(f"/api/v1/scripts/{v1.pk}/approve/").status_code == 200
    v2 = write(both, content="echo v2\n")
    assert v2.version == 2
    assert both.post(f"/api/v1/scripts/{v2.pk}/approve/").status_code == 403
    unchanged_script(v2)


def test_someone_else_approves(people):
    tech, boss, *_ = people
    script = write(tech)
    r = boss.post(f"/api/v1/scripts/{script.pk}/approve/")
    assert r.status_code == 200
    assert r.json()["approval_status"] == "approved"
    assert r.json()["decided_by"] == "boss"
    assert HistoryEvent.objects.filter(action="script.approved", actor="user:boss").count() == 1


def test_a_second_decision_on_a_decided_script_conflicts(people):
    tech, boss, boss2, *_ = people
    script = write(tech)
    assert boss.post(f"/api/v1/scripts/{script.pk}/approve/").status_code == 200
    r = boss2.post(f"/api/v1/scripts/{script.pk}/approve/")
    assert r.status_code == 409
    assert r.json() == {"detail": "This script version is already approved."}
    r = boss2.post(f"/api/v1/scripts/{script.pk}/reject/", {"reason": "too late"}, format="json")
    assert r.status_code == 409
    unchanged_script(script, "approved")
    assert script.decided_by.username == "boss" and script.decision_reason == ""

    rejected = write(tech, name="other")
    assert boss.post(f"/api/v1/scripts/{rejected.pk}/reject/", {"reason": "no"}, format="json").status_code == 200
    r = boss2.post(f"/api/v1/scripts/{rejected.pk}/approve/")
    assert r.status_code == 409
    assert r.json() == {"detail": "This script version is already rejected."}
    unchanged_script(rejected, "rejected")


def test_two_approvers_with_the_same_stale_view_cannot_both_decide(people):
    """The decision is a conditional update: a second decider holding a stale 'pending' object loses."""
    tech, boss, boss2, *_ = people
    script = write(tech)
    seen_by_boss, seen_by_boss2 = Script.objects.get(pk=script.pk), Script.objects.get(pk=script.pk)
    scripting.approve_script(seen_by_boss, boss.user)
    with pytest.raises(Conflict):
        scripting.reject_script(seen_by_boss2, boss2.user, "unsafe")
    unchanged_script(script, "approved")
    assert script.decided_by_id == boss.user.pk
    assert HistoryEvent.objects.filter(action__in=["script.approved", "script.rejected"]).count() == 1


@pytest.mark.parametrize("reason", [None, "", "   "])
def test_rejecting_a_script_needs_a_reason(people, reason):
    tech, boss, *_ = people
    script = write(tech)
    body = {} if reason is None else {"reason": reason}
    r = boss.post(f"/api/v1/scripts/{script.pk}/reject/", body, format="json")
    assert r.status_code == 400
    assert r.json() == NO_REASON
    unchanged_script(script)


@pytest.mark.parametrize("role", ["technician", "psa", "compliance"])
def test_a_role_without_approve_may_not_decide_a_script(people, caller, role):
    tech = people[0]
    script = write(tech)
    outsider = caller(f"{role}-2", role)
    r = outsider.post(f"/api/v1/scripts/{script.pk}/approve/")
    assert r.status_code == 403
    assert r.json() == {"detail": "Your role may not approve."}
    r = outsider.post(f"/api/v1/scripts/{script.pk}/reject/", {"reason": "x"}, format="json")
    assert r.status_code == 403
    unchanged_script(script)
    assert refused("script.approve", f"{role}-2").get().payload["reason"] == "role may not approve"
    assert refused("script.reject", f"{role}-2").count() == 1


# --- jobs over the API ----------------------------------------------------------------------


@pytest.fixture
def gated(people):
    """An approved script version whose every job needs a second person."""
    tech, boss, *_ = people
    return approved_script(tech.user, boss.user, name="gated", requires_approval=True)


def unchanged_job(job, status="awaiting_approval"):
    job.refresh_from_db()
    assert job.status == status
    if status == "awaiting_approval":
        assert job.decided_by_id is None
        assert Instruction.objects.filter(job_id=job.pk).count() == 0


def test_the_requester_may_not_approve_or_reject_their_own_job(people, gated, agent, task):
    both = people[4]
    job = request_job(both, gated, agent, task)
    assert job.status == "awaiting_approval"
    r = both.post(f"/api/v1/script-jobs/{job.pk}/approve/")
    assert r.status_code == 403
    assert r.json() == SELF
    unchanged_job(job)
    r = both.post(f"/api/v1/script-jobs/{job.pk}/reject/", {"reason": "mine"}, format="json")
    assert r.status_code == 403
    unchanged_job(job)
    assert refused("job.approve", "both").get().payload["reason"] == "self-approval"
    assert refused("job.reject", "both").get().subject_id == str(job.pk)


def test_a_second_decision_on_a_decided_job_conflicts(people, gated, agent, task):
    tech, boss, boss2, *_ = people
    job = request_job(tech, gated, agent, task)
    assert boss.post(f"/api/v1/script-jobs/{job.pk}/approve/").status_code == 200
    r = boss2.post(f"/api/v1/script-jobs/{job.pk}/approve/")
    assert r.status_code == 409
    assert r.json() == {"detail": "The job is queued; it cannot become queued."}
    r = boss2.post(f"/api/v1/script-jobs/{job.pk}/reject/", {"reason": "too late"}, format="json")
    assert r.status_code == 409
    assert r.json() == {"detail": "The job is queued; it cannot become rejected."}
    unchanged_job(job, "queued")
    assert job.decided_by_id == boss.user.pk
    assert Instruction.objects.filter(job_id=job.pk).count() == 1

    other = request_job(tech, gated, agent, task)
    assert boss.post(f"/api/v1/script-jobs/{other.pk}/reject/", {"reason": "no"}, format="json").status_code == 200
    r = boss2.post(f"/api/v1/script-jobs/{other.pk}/approve/")
    assert r.status_code == 409
    assert r.json() == {"detail": "The job is rejected; it cannot become queued."}
    unchanged_job(other, "rejected")
    assert Instruction.objects.filter(job_id=other.pk).count() == 0


def test_a_job_that_needed_no_approval_cannot_be_approved(people, agent, task):
    tech, boss, *_ = people
    plain = approved_script(tech.user, boss.user, name="plain")
    job = request_job(tech, plain, agent, task)
    assert job.status == "queued"
    assert boss.post(f"/api/v1/script-jobs/{job.pk}/approve/").status_code == 409
    assert Instruction.objects.filter(job_id=job.pk).count() == 1


def test_two_approvers_of_a_job_with_a_stale_view_issue_one_instruction(people, gated, agent, task):
    tech, boss, boss2, *_ = people
    job = request_job(tech, gated, agent, task)
    seen_by_boss, seen_by_boss2 = ScriptJob.objects.get(pk=job.pk), ScriptJob.objects.get(pk=job.pk)
    scripting.approve_script_job(seen_by_boss, boss.user)
    with pytest.raises(Conflict):
        scripting.approve_script_job(seen_by_boss2, boss2.user)
    assert Instruction.objects.filter(job_id=job.pk).count() == 1
    unchanged_job(job, "queued")
    assert job.decided_by_id == boss.user.pk


@pytest.mark.parametrize("reason", [None, "", "  \n"])
def test_rejecting_a_job_needs_a_reason(people, gated, agent, task, reason):
    tech, boss, *_ = people
    job = request_job(tech, gated, agent, task)
    body = {} if reason is None else {"reason": reason}
    r = boss.post(f"/api/v1/script-jobs/{job.pk}/reject/", body, format="json")
    assert r.status_code == 400
    assert r.json() == NO_REASON
    unchanged_job(job)


@pytest.mark.parametrize("role", ["technician", "psa", "compliance"])
def test_a_role_without_approve_may_not_decide_a_job(people, caller, gated, agent, task, role):
    tech = people[0]
    job = request_job(people[3], gated, agent, task)  # requested by the PSA
    outsider = caller(f"{role}-2", role)
    r = outsider.post(f"/api/v1/script-jobs/{job.pk}/approve/")
    assert r.status_code == 403
    assert r.json() == {"detail": "Your role may not approve."}
    r = outsider.post(f"/api/v1/script-jobs/{job.pk}/reject/", {"reason": "x"}, format="json")
    assert r.status_code == 403
    unchanged_job(job)
    assert refused("job.approve", f"{role}-2").count() == 1
    assert refused("job.reject", f"{role}-2").count() == 1
    assert tech  # the author of the script is irrelevant here


@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_the_engine_checks_the_approver_role_whichever_path_decides(people, caller, gated, agent, task, site, decision):
    """The role is the engine's check, as four eyes is: a path that calls it directly (any kind's
    API, admin action or queue) cannot forget it, and the refusal is in the job's site's history."""
    job = request_job(people[3], gated, agent, task)
    outsider = caller("tech-2", "technician")
    with pytest.raises(Forbidden, match="Your role may not approve."):
        if decision == "approve":
            engine.approve_job(job, outsider.user)
        else:
            engine.reject_job(job, outsider.user, "not now")
    unchanged_job(job)
    event = refused(f"job.{decision}", "tech-2").get()
    assert (event.payload["reason"], event.site_id) == ("role may not approve", site.pk)


# --- the Django admin approval queue ------------------------------------------------------

SCRIPTS_ADMIN = "/admin/scripting/script/"
JOBS_ADMIN = "/admin/scripting/scriptjob/"


def admin_client(user):
    assert user.is_staff
    return otp_login(Client(), user)  # approvers act in the admin with a verified second factor


def act(client, url, action, obj, **extra):
    """Post an admin changelist action on ``obj`` the way the changelist form does."""
    data = {"action": action, "_selected_action": [str(obj.pk)], "index": "0", **extra}
    return client.post(url, data, follow=True)


def confirm_reject(client, url, obj, reason):
    """Post the intermediate page's form (it has no ``index``, it has ``confirm``)."""
    data = {"action": "reject", "_selected_action": [str(obj.pk)], "confirm": "1", "reason": reason}
    return client.post(url, data, follow=True)


def shown(response) -> str:
    return html.unescape(response.content.decode())


def error_messages(response) -> list[str]:
    return [html.unescape(m) for m in re.findall(r'<li class="error">(.*?)</li>', response.content.decode(), re.S)]


def error_about(obj, text: str) -> str:
    """The admin shows each refusal as an error message naming the object (first letter capitalised)."""
    return capfirst(f"{obj}: {text}")


def test_admin_refuses_an_approver_approving_their_own_script(people):
    both = people[4]
    script = write(both)
    r = act(admin_client(both.user), SCRIPTS_ADMIN, "approve", script)
    assert r.status_code == 200
    assert error_about(script, "You may not approve or reject your own work.") in error_messages(r)
    assert "Approved 1 item(s)." not in shown(r)
    unchanged_script(script)
    assert refused("script.approve", "both").count() == 1


def test_admin_refuses_an_approver_rejecting_their_own_script(people):
    both = people[4]
    script = write(both)
    client = admin_client(both.user)
    r = confirm_reject(client, SCRIPTS_ADMIN, script, "oops")
    assert error_about(script, "You may not approve or reject your own work.") in error_messages(r)
    unchanged_script(script)
    assert refused("script.reject", "both").count() == 1


def test_admin_approves_someone_elses_script(people):
    tech, boss, *_ = people
    script = write(tech)
    r = act(admin_client(boss.user), SCRIPTS_ADMIN, "approve", script)
    assert r.status_code == 200
    assert "Approved 1 item(s)." in shown(r)
    unchanged_script(script, "approved")
    assert script.decided_by_id == boss.user.pk


def test_admin_second_approval_of_a_decided_script_is_an_error(people):
    tech, boss, boss2, *_ = people
    script = write(tech)
    act(admin_client(boss.user), SCRIPTS_ADMIN, "approve", script)
    r = act(admin_client(boss2.user), SCRIPTS_ADMIN, "approve", script)
    assert error_about(script, "This script version is already approved.") in error_messages(r)
    unchanged_script(script, "approved")
    assert script.decided_by_id == boss.user.pk


def test_admin_reject_asks_for_a_reason_first(people):
    tech, boss, *_ = people
    script = write(tech)
    client = admin_client(boss.user)
    page = act(client, SCRIPTS_ADMIN, "reject", script)
    assert page.status_code == 200
    body = shown(page)
    assert "Reject with a reason" in body
    assert 'name="reason"' in body and 'name="confirm"' in body
    assert f'value="{script.pk}"' in body
    unchanged_script(script)  # asking is not deciding

    empty = confirm_reject(client, SCRIPTS_ADMIN, script, "   ")
    assert error_messages(empty), "a blank reason must be refused with an error message"
    assert "reason" in error_messages(empty)[0].lower()
    assert "Reject with a reason" in shown(empty)
    unchanged_script(script)

    done = confirm_reject(client, SCRIPTS_ADMIN, script, "calls curl | sh")
    assert "Rejected 1 item(s)." in shown(done)
    unchanged_script(script, "rejected")
    assert script.decision_reason == "calls curl | sh"
    assert script.decided_by_id == boss.user.pk


def test_admin_refuses_an_approver_deciding_their_own_job(people, gated, agent, task):
    both = people[4]
    job = request_job(both, gated, agent, task)
    client = admin_client(both.user)
    r = act(client, JOBS_ADMIN, "approve", job)
    assert error_about(job, "You may not approve or reject your own work.") in error_messages(r)
    unchanged_job(job)
    r = confirm_reject(client, JOBS_ADMIN, job, "mine")
    assert error_about(job, "You may not approve or reject your own work.") in error_messages(r)
    unchanged_job(job)
    assert refused("job.approve", "both").count() == 1
    assert refused("job.reject", "both").count() == 1


def test_admin_approves_and_rejects_someone_elses_jobs(people, gated, agent, task):
    tech, boss, *_ = people
    job = request_job(tech, gated, agent, task)
    client = admin_client(boss.user)
    r = act(client, JOBS_ADMIN, "approve", job)
    assert "Approved 1 item(s)." in shown(r)
    unchanged_job(job, "queued")
    assert job.decided_by_id == boss.user.pk
    assert Instruction.objects.filter(job_id=job.pk).count() == 1

    other = request_job(tech, gated, agent, task)
    page = act(client, JOBS_ADMIN, "reject", other)
    assert "Reject with a reason" in shown(page)
    unchanged_job(other)
    r = confirm_reject(client, JOBS_ADMIN, other, "outside the change window")
    assert "Rejected 1 item(s)." in shown(r)
    unchanged_job(other, "rejected")
    assert other.status_reason == "outside the change window"
    assert Instruction.objects.filter(job_id=other.pk).count() == 0


def test_admin_offers_no_decision_to_a_staff_user_without_approve(people, caller):
    tech = people[0]
    script = write(tech)
    auditor = caller("auditor", "compliance").user
    auditor.is_staff = True
    auditor.save()
    client = admin_client(auditor)
    listing = client.get(SCRIPTS_ADMIN)
    assert listing.status_code == 200
    assert 'value="approve"' not in listing.content.decode()
    r = act(client, SCRIPTS_ADMIN, "approve", script)
    assert r.status_code == 200
    assert "Approved 1 item(s)." not in shown(r)
    unchanged_script(script)
    assert not HistoryEvent.objects.filter(action="script.approved").exists()
