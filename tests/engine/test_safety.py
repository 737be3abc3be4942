"""Safety controls, each tried against: kill switch, throttles, withdrawn authority, agent
revocation and rotation, privileged versions, approval expiry."""

import json
import uuid
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from rmm.access import services as access_services
from rmm.authority import services as authority
from rmm.engine import services as engine
from rmm.engine.models import Instruction, KillSwitch
from rmm.engine.services import kill_switches
from rmm.history.models import HistoryEvent
from scripting import services as scripting
from scripting.models import Script, ScriptJob
from tests.helpers import approved_authority, approved_script, heartbeat, make_agent, post_json, report


@pytest.fixture
def people(caller):
    return {
        "psa": caller("psa", "psa"),
        "tech": caller("tech", "technician"),
        "boss": caller("boss", "approver"),
        "auditor": caller("auditor", "compliance"),
        "root": caller("root", "admin"),
    }


@pytest.fixture
def fleet(people, site, other_site):
    """Three agents on site alpha, one on beta; an approved script; authority on both sites."""
    agents = [make_agent(site, f"a{i}") for i in range(3)] + [make_agent(other_site, "b0")]
    tasks = {
        site.pk: approved_authority(site, people["psa"].user),
        other_site.pk: approved_authority(other_site, people["psa"].user),
    }
    script = approved_script(people["tech"].user, people["boss"].user)
    return agents, tasks, script


def new_job(people, fleet, index):
    agents, tasks, script = fleet
    agent = agents[index][0]
    return scripting.create_script_job(
        people["psa"].user, script_id=script.pk, asset_id=agent.asset_id, psa_task_id=tasks[agent.asset.site_id].pk
    )


def engage(caller_, **body):
    return caller_.post("/api/v1/kill-switches/", body, format="json")


# --- kill switch ---------------------------------------------------------------------------


def test_engaging_aborts_queued_work_and_kills_running_work_in_scope(people, fleet, site):
    agents = fleet[0]
    running = new_job(people, fleet, 0)
    heartbeat(agents[0][1])  # leased: running
    queued = new_job(people, fleet, 1)
    elsewhere = new_job(people, fleet, 3)

    r = engage(people["tech"], scope="site", target=site.name, reason="ransomware suspected")
    assert r.status_code == 201, r.content
    switch_id = r.json()["id"]

    queued.refresh_from_db()
    assert queued.status == "aborted"
    assert "ransomware suspected" in queued.status_reason
    inst = Instruction.objects.get(job_id=running.pk)
    answer = heartbeat(agents[0][1], running=[str(inst.pk)])
    assert answer["abort"] == [str(inst.pk)]
    assert answer["instructions"] == []
    assert report(agents[0][1], str(inst.pk), outcome="aborted", exit_code=None, stdout="partial\n").status_code == 201
    running.refresh_from_db()
    assert running.status == "aborted"
    assert running.result.stdout == "partial\n"
    # Out of scope: untouched and leased as usual.
    assert len(heartbeat(agents[3][1])["instructions"]) == 1
    assert ScriptJob.objects.get(pk=elsewhere.pk).status == "running"

    refused = people["psa"].post(
        "/api/v1/script-jobs/",
        {"script": str(fleet[2].pk), "asset": str(agents[2][0].asset_id), "psa_task_id": str(fleet[1][site.pk].pk)},
        format="json",
    )
    assert refused.status_code == 403
    refusals = HistoryEvent.objects.filter(action="refused.script_job.create")
    assert any("kill switch" in event.payload["reason"] for event in refusals)

    assert (
        people["tech"]
        .post(f"/api/v1/kill-switches/{switch_id}/release/", {"reason": "clean"}, format="json")
        .status_code
        == 403
    )
    assert people["boss"].post(f"/api/v1/kill-switches/{switch_id}/release/", {}, format="json").status_code == 400
    ok = people["boss"].post(f"/api/v1/kill-switches/{switch_id}/release/", {"reason": "EDR cleared it"}, format="json")
    assert ok.status_code == 200
    assert ok.json()["engaged"] is False
    again = people["boss"].post(f"/api/v1/kill-switches/{switch_id}/release/", {"reason": "twice"}, format="json")
    assert again.status_code == 409
    assert new_job(people, fleet, 2).status == "queued"


def test_a_failing_kill_switch_hook_is_recorded_and_spares_no_other_work(people, fleet, site, monkeypatch):
    """Each app's hook (batches, live sessions, …) runs even when another one fails before it."""
    stopped = []

    def broken(switch, actor):
        raise RuntimeError("the session relay is unreachable")

    def recording(switch, actor):
        stopped.append(switch.pk)

    monkeypatch.setattr(kill_switches, "_HOOKS", list(kill_switches._HOOKS))
    kill_switches.register_hook(broken)
    kill_switches.register_hook(recording)
    queued = new_job(people, fleet, 1)

    r = engage(people["tech"], scope="site", target=site.name, reason="hooks drill")
    assert r.status_code == 201, r.content
    switch = KillSwitch.objects.get(pk=r.json()["id"])
    assert switch.engaged
    queued.refresh_from_db()
    assert queued.status == "aborted"
    assert stopped == [switch.pk]
    [failed] = HistoryEvent.objects.filter(action="kill_switch.hook_failed")
    assert failed.payload["hook"].endswith("broken")
    assert "the session relay is unreachable" in failed.payload["error"]


def test_a_lease_raced_past_the_switch_is_refused_and_recorded(people, fleet, site):
    agents = fleet[0]
    new_job(people, fleet, 0)
    # A switch created behind the service's back (as a racing worker would see it): the lease itself holds.
    KillSwitch.objects.create(
        scope="asset", site=site, asset=agents[0][0].asset, reason="race", engaged_by=people["tech"].user
    )
    assert heartbeat(agents[0][1])["instructions"] == []
    refusal = HistoryEvent.objects.get(action="refused.lease")
    assert refusal.actor == f"agent:{agents[0][0].pk}"
    assert "kill switch" in refusal.payload["reason"]


def test_every_heartbeat_aborts_running_work_under_a_switch_its_engage_did_not_mark(people, fleet, site):
    """Law 6's "on every heartbeat": a switch that reaches the heartbeat without the engage's scan
    having marked the running instruction (inserted behind the service's back, as a raced lease
    would leave it) still has it killed, and the abort is recorded."""
    agents = fleet[0]
    job = new_job(people, fleet, 0)
    [leased] = heartbeat(agents[0][1])["instructions"]
    inst_id = json.loads(leased["payload"])["instruction_id"]
    assert heartbeat(agents[0][1], running=[inst_id])["abort"] == []  # no switch yet: it runs on
    switch = KillSwitch.objects.create(
        scope="asset", site=site, asset=agents[0][0].asset, reason="behind its back", engaged_by=people["tech"].user
    )
    assert Instruction.objects.get(pk=inst_id).abort_reason == ""  # the service's scan never ran

    answer = heartbeat(agents[0][1], running=[inst_id])

    assert answer["abort"] == [inst_id] and answer["instructions"] == []
    event = HistoryEvent.objects.get(action="instruction.abort_requested", subject_id=inst_id)
    assert event.actor == f"agent:{agents[0][0].pk}"
    assert event.payload["reason"] == f"kill switch engaged on {switch.target_label}: behind its back"
    assert event.payload["kill_switch"] == str(switch.pk)
    assert heartbeat(agents[0][1], running=[inst_id])["abort"] == [inst_id]  # again, recorded once
    assert HistoryEvent.objects.filter(action="instruction.abort_requested", subject_id=inst_id).count() == 1
    assert report(agents[0][1], inst_id, outcome="aborted", exit_code=None, stdout="partial\n").status_code == 201
    job.refresh_from_db()
    assert (job.status, job.status_reason) == ("aborted", event.payload["reason"])


def test_who_may_engage_where(people, fleet, site, other_site, caller):
    agents = fleet[0]
    assert engage(people["auditor"], scope="site", target=site.name, reason="x").status_code == 403
    assert engage(people["tech"], scope="site", target="nowhere", reason="x").status_code == 400
    assert engage(people["tech"], scope="site", target=site.name, reason="").status_code == 400
    assert engage(people["tech"], scope="galaxy", reason="x").status_code == 400
    local = caller("local-tech", "technician", sites=[other_site])
    assert engage(local, scope="site", target=site.name, reason="x").status_code == 400  # not its site: unknown
    assert engage(local, scope="asset", target=str(agents[0][0].asset_id), reason="x").status_code == 400
    assert engage(local, scope="global", reason="x").status_code == 403
    assert engage(local, scope="site", target=other_site.name, reason="mine").status_code == 201
    r = engage(people["root"], scope="global", reason="incident 42")
    assert r.status_code == 201
    assert all(heartbeat(auth)["instructions"] == [] for _, auth in agents)
    # Every console page shows it.
    client = Client()
    client.force_login(people["tech"].user)
    assert "incident 42" in client.get("/console/").content.decode()


# --- throttles -----------------------------------------------------------------------------


def test_one_running_instruction_per_asset_the_rest_wait_in_order(people, fleet):
    agents = fleet[0]
    first, second = new_job(people, fleet, 0), new_job(people, fleet, 0)
    leased = heartbeat(agents[0][1])["instructions"]
    assert [json.loads(e["payload"])["job_id"] for e in leased] == [str(first.pk)]
    assert heartbeat(agents[0][1])["instructions"] == []
    report(agents[0][1], json.loads(leased[0]["payload"])["instruction_id"])
    assert [json.loads(e["payload"])["job_id"] for e in heartbeat(agents[0][1])["instructions"]] == [str(second.pk)]


def test_site_and_total_ceilings_hold_back_work_and_say_so(people, fleet, settings):
    settings.RMM_MAX_RUNNING_PER_SITE = 2
    settings.RMM_MAX_RUNNING_TOTAL = 2
    agents = fleet[0]
    for i in (0, 1, 2, 3):
        new_job(people, fleet, i)
    got = [len(heartbeat(auth)["instructions"]) for _, auth in agents]
    assert got == [1, 1, 0, 0]  # five jobs, ceilings of two
    assert Instruction.objects.filter(status="running").count() == 2
    reasons = list(HistoryEvent.objects.filter(action="refused.lease").values_list("payload__reason", flat=True))
    assert any("in this site" in r or "in all" in r for r in reasons)
    # Finishing one frees a place.
    first = Instruction.objects.filter(status="running").order_by("leased_at").first()
    report(agents[0][1], str(first.pk))
    assert sum(len(heartbeat(auth)["instructions"]) for _, auth in agents[2:]) == 1


def test_large_batches_are_released_in_waves(people, fleet, settings):
    settings.RMM_WAVE_SIZE = 2
    settings.RMM_WAVE_INTERVAL_SECONDS = 600
    agents, tasks, script = fleet
    job = new_job(people, fleet, 0)
    insts = engine.issue_instructions(job, people["psa"].user, wave_offset=5)  # the 6th in its batch
    assert insts[0].release_at - insts[0].issued_at == timedelta(seconds=2 * 600)


def test_an_agent_calling_too_fast_is_told_to_slow_down(people, fleet, settings):
    settings.RMM_HEARTBEAT_MIN_SPACING_SECONDS = 30
    _, auth = fleet[0][0]
    heartbeat(auth)
    r = post_json(Client(), "/api/v1/agent/heartbeat/", {"capacity": 1}, HTTP_AUTHORIZATION=auth)
    assert r.status_code == 429
    assert int(r["Retry-After"]) == 30
    assert HistoryEvent.objects.filter(action="refused.heartbeat").exists()


# --- authority withdrawn upstream ------------------------------------------------------------


def test_closing_the_case_stops_queued_and_running_work(people, fleet, site):
    agents, tasks, _ = fleet
    running = new_job(people, fleet, 0)
    heartbeat(agents[0][1])
    queued = new_job(people, fleet, 1)
    task = tasks[site.pk]
    r = people["psa"].put(
        f"/api/v1/psa/cases/{task.case_id}/", {"title": "done", "status": "closed", "site": site.name}, format="json"
    )
    assert r.status_code == 200
    queued.refresh_from_db()
    assert queued.status == "aborted"
    assert "authority withdrawn" in queued.status_reason
    inst = Instruction.objects.get(job_id=running.pk)
    assert heartbeat(agents[0][1], running=[str(inst.pk)])["abort"] == [str(inst.pk)]
    report(agents[0][1], str(inst.pk), outcome="aborted", exit_code=None, stdout="")
    running.refresh_from_db()
    assert running.status == "aborted"
    assert "authority withdrawn" in running.status_reason


def test_expired_authority_stops_work_at_the_next_sweep(people, fleet, site):
    agents, tasks, _ = fleet
    job = new_job(people, fleet, 0)
    task = tasks[site.pk]
    authority.upsert_task(
        people["psa"].user,
        task.pk,
        case_id=task.case_id,
        title=task.title,
        status="approved",
        expires_at=timezone.now() + timedelta(minutes=5),
    )
    engine.sweep(now=timezone.now() + timedelta(minutes=6))
    job.refresh_from_db()
    assert job.status == "aborted"
    assert "expired" in job.status_reason


# --- agents: revocation and rotation --------------------------------------------------------------


def test_a_revoked_agent_gets_401_and_nothing_more(people, fleet):
    agent, auth = fleet[0][0]
    new_job(people, fleet, 0)
    assert people["tech"].post(f"/api/v1/agents/{agent.pk}/revoke/", {"reason": "x"}, format="json").status_code == 403
    assert people["root"].post(f"/api/v1/agents/{agent.pk}/revoke/", {}, format="json").status_code == 400
    r = people["root"].post(f"/api/v1/agents/{agent.pk}/revoke/", {"reason": "laptop stolen"}, format="json")
    assert r.status_code == 200 and r.json()["revoked"] is True
    answer = post_json(Client(), "/api/v1/agent/heartbeat/", {"capacity": 1}, HTTP_AUTHORIZATION=auth)
    assert answer.status_code == 401
    assert set(answer.json()) == {"detail"}
    assert HistoryEvent.objects.filter(action="refused.agent.call", payload__agent_id=str(agent.pk)).exists()
    inst = Instruction.objects.get(agent=agent)  # nothing leased: aborted at the revocation
    assert (inst.status, inst.leased_at, inst.reason) == ("aborted", None, "agent revoked: laptop stolen")


def test_rotation_hands_out_a_new_secret_and_retires_the_old_once_used(people, fleet):
    agent, old_auth = fleet[0][0]
    assert people["root"].post(f"/api/v1/agents/{agent.pk}/rotate/").status_code == 200
    first = heartbeat(old_auth)["new_secret"]
    second = heartbeat(old_auth)["new_secret"]  # the first answer was "lost": a fresh one, old still works
    assert first != second
    new_auth = f"Agent {agent.pk}:{second}"
    assert "new_secret" not in heartbeat(new_auth)
    assert post_json(Client(), "/api/v1/agent/heartbeat/", {}, HTTP_AUTHORIZATION=old_auth).status_code == 401
    assert (
        post_json(Client(), "/api/v1/agent/heartbeat/", {}, HTTP_AUTHORIZATION=f"Agent {agent.pk}:{first}").status_code
        == 401
    )
    assert HistoryEvent.objects.filter(action="agent.secret_rotated").count() == 1


# --- privileged versions and approval expiry ---------------------------------------------------------


def test_privileged_versions_need_the_privileged_approval_permission(people):
    from django.contrib.auth.models import Permission

    script = scripting.create_script(people["tech"].user, name="fix", language="sh", content="id -u\n", privileged=True)
    r = people["boss"].post(f"/api/v1/scripts/{script.pk}/approve/")
    assert r.status_code == 403
    assert Script.objects.get(pk=script.pk).approval_status == "pending"
    people["boss"].user.user_permissions.add(Permission.objects.get(codename="approve_privileged"))
    from django.contrib.auth import get_user_model

    people["boss"].user = get_user_model().objects.get(pk=people["boss"].user.pk)  # drop the permission cache
    assert scripting.approve_script(script, people["boss"].user).approval_status == "approved"


def test_privileged_flag_reaches_the_signed_instruction(people, fleet, site):
    from django.contrib.auth.models import Permission

    agents, tasks, _ = fleet
    people["boss"].user.user_permissions.add(Permission.objects.get(codename="approve_privileged"))
    from django.contrib.auth import get_user_model

    approver = get_user_model().objects.get(pk=people["boss"].user.pk)
    script = scripting.create_script(
        people["tech"].user, name="root", language="sh", content="id -u\n", privileged=True
    )
    scripting.approve_script(script, approver)
    scripting.create_script_job(
        people["psa"].user, script_id=script.pk, asset_id=agents[0][0].asset_id, psa_task_id=tasks[site.pk].pk
    )
    payload = json.loads(heartbeat(agents[0][1])["instructions"][0]["payload"])
    assert payload["privileged"] is True


def test_pending_approvals_expire_into_rejected(people, fleet, settings):
    agents, tasks, _ = fleet
    script = approved_script(people["tech"].user, people["boss"].user, name="careful", requires_approval=True)
    job = scripting.create_script_job(
        people["tech"].user,
        script_id=script.pk,
        asset_id=agents[0][0].asset_id,
        psa_task_id=tasks[agents[0][0].asset.site_id].pk,
    )
    pending = scripting.create_script(people["tech"].user, name="later", language="sh", content="true\n")
    later = timezone.now() + timedelta(hours=settings.RMM_APPROVAL_TTL_HOURS, minutes=1)
    assert engine.expire_approvals(now=later) == 1
    assert scripting.expire_pending_versions(now=later) == 1
    job.refresh_from_db()
    assert job.status == "rejected"
    assert "expired" in job.status_reason
    assert Script.objects.get(pk=pending.pk).approval_status == "rejected"
    assert people["boss"].post(f"/api/v1/script-jobs/{job.pk}/approve/").status_code == 409


def test_unknown_uuid_targets_are_clear_errors(people):
    r = engage(people["tech"], scope="asset", target=str(uuid.uuid4()), reason="x")
    assert r.status_code == 400 and "target" in r.json()
    r = engage(people["tech"], scope="asset", target="not-a-uuid", reason="x")
    assert r.status_code == 400 and "target" in r.json()


# --- API rate limits and site boundaries ---------------------------------------------------------


def test_api_calls_are_rate_limited_per_token(people, settings):
    from rest_framework.settings import api_settings
    from rest_framework.throttling import SimpleRateThrottle

    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"token": "3/min"}}
    api_settings.reload()
    SimpleRateThrottle.THROTTLE_RATES = api_settings.DEFAULT_THROTTLE_RATES
    try:
        codes = [people["tech"].get("/api/v1/sites/").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        limited = people["tech"].get("/api/v1/sites/")
        assert int(limited["Retry-After"]) > 0
        assert people["boss"].get("/api/v1/sites/").status_code == 200  # another token, its own budget
    finally:
        settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"token": "600/min"}}
        api_settings.reload()
        SimpleRateThrottle.THROTTLE_RATES = api_settings.DEFAULT_THROTTLE_RATES


def test_reaching_into_another_site_is_a_404_and_recorded(people, fleet, other_site, caller):
    agents = fleet[0]
    local = caller("local", "technician", sites=[other_site])
    job = new_job(people, fleet, 0)
    for path in (
        f"/api/v1/assets/{agents[0][0].asset_id}/",
        f"/api/v1/script-jobs/{job.pk}/",
        f"/api/v1/agents/{agents[0][0].pk}/",
    ):
        assert local.get(path).status_code == 404
    refusals = HistoryEvent.objects.filter(action="refused.access", actor="user:local")
    assert refusals.count() == 3
    assert local.get(f"/api/v1/assets/{uuid.uuid4()}/").status_code == 404
    assert HistoryEvent.objects.filter(action="refused.access", actor="user:local").count() == 3  # unknown: nothing


def test_site_grants_and_revocations_are_recorded(people, site):
    from django.core.management import call_command

    user = access_services.ensure_user_with_role("newbie", "technician")
    call_command("rmm_grant", "newbie", "--site", site.name)
    from rmm.access import roles as access

    assert list(access.visible_sites(user)) == [site]
    call_command("rmm_grant", "newbie", "--site", site.name, "--revoke")
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.get(pk=user.pk)
    assert list(access.visible_sites(user)) == []
    actions = list(HistoryEvent.objects.filter(subject_id=str(user.pk)).values_list("action", flat=True))
    assert "access.site_granted" in actions and "access.site_revoked" in actions


def test_a_site_scoped_approver_cannot_release_a_global_switch(people, other_site, caller):
    r = engage(people["root"], scope="global", reason="incident")
    local_boss = caller("local-boss", "approver", sites=[other_site])
    refused = local_boss.post(f"/api/v1/kill-switches/{r.json()['id']}/release/", {"reason": "mine"}, format="json")
    assert refused.status_code == 403
    assert KillSwitch.objects.get(pk=r.json()["id"]).engaged
    assert HistoryEvent.objects.filter(action="refused.kill_switch.release", actor="user:local-boss").exists()
