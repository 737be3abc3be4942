"""Remote sessions (issue 18, parts 1, 3, 5 and 6): opened on a PSA task's authority within the
caller's sites, on an online agent, under the site's policy; privileged ones wait for an approver
who is not the requester; ended by the technician, an admin, the kill switch, the maximum duration
or the idle timeout, each end in the history and the outbox. Every refusal is recorded and changes
nothing."""

from __future__ import annotations

import json
import socket
import threading
from datetime import timedelta

import pytest
from django.utils import timezone
from django.utils.module_loading import import_string
from django_q.models import Schedule

from rmm.engine.models import Instruction, KillSwitch
from rmm.engine.services import kill_switches
from rmm.history.models import HistoryEvent
from rmm.inventory.models import Agent, Asset
from rmm.outbox.models import Event
from rmm_agent.protocol import SESSION_ACTION
from sessions import providers, services
from sessions.models import RemoteSession
from sessions.providers import meshcentral
from tests.helpers import approved_authority
from tests.sessions.helpers import URL, online, open_, set_policy


def refusals(action="remote_session.open") -> list[str]:
    return [e.payload["reason"] for e in HistoryEvent.objects.filter(action=f"refused.{action}").order_by("sequence")]


def test_a_session_opens_on_authority_and_its_agent_is_sent_one_signed_step(world):
    r = open_(world)
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["join_url"] == f"/console/sessions/{body['id']}/" and body["status"] == "queued"
    shown = world["tech"].get(f"{URL}{body['id']}/").json()
    for seed_field in ("asset", "initiated_by", "session_type", "started_at", "ended_at", "recorded"):
        assert seed_field in shown
    assert shown["initiated_by"] == "tech" and shown["asset"] == str(world["asset"]) and shown["recorded"] is False
    assert shown["end_reason"] == "" and shown["recording_sha256"] == "" and shown["evidence"] == []
    assert shown["psa_task_id"] == str(world["task"].pk) and shown["live"] is False
    (step,) = Instruction.objects.filter(asset_id=world["asset"])
    assert step.interpreter == SESSION_ACTION and step.privileged is False and step.signature
    assert json.loads(step.content) == {"session": body["id"], "relay": f"/ws/agent/sessions/{body['id']}/"}
    created = HistoryEvent.objects.get(action="job.created", subject_id=body["id"])
    assert created.payload["kind"] == "remote_session" and created.payload["psa_task_id"] == str(world["task"].pk)


def test_without_authority_is_refused_recorded_and_nothing_is_opened(world):
    r = open_(world, psa_task_id=None)
    assert r.status_code == 400 and "psa_task_id" in r.json()
    world["task"].status = "closed"
    world["task"].save(update_fields=["status"])
    r = open_(world)
    assert r.status_code == 400 and "psa_task_id" in r.json()
    assert refusals("remote_session_job.create") == [
        "no authority: no PSA task given",
        "no authority: PSA task is closed, not approved",
    ]
    assert not RemoteSession.objects.exists() and not Instruction.objects.exists()


def test_an_asset_outside_the_callers_sites_is_not_found_and_recorded(world):
    r = open_(world, asset=str(world["elsewhere"]))
    assert r.status_code == 404 and r.json() == {"asset": ["No such asset."]}
    assert refusals() == ["no such asset in the caller's sites"]
    assert not RemoteSession.objects.exists()


def test_an_offline_agent_or_one_that_cannot_relay_is_a_conflict(world):
    Agent.objects.filter(pk=world["agent"].pk).update(last_seen_at=timezone.now() - timedelta(hours=1))
    r = open_(world)
    assert r.status_code == 409 and r.json() == {"asset": ["The asset's agent is offline."]}
    online(world["agent"], capabilities="structured_result")
    r = open_(world)
    assert r.status_code == 409 and r.json() == {"asset": ["The asset's agent cannot carry a terminal session."]}
    assert refusals() == ["The asset's agent is offline", "The asset's agent cannot carry a terminal session"]
    assert not RemoteSession.objects.exists()


def test_roles_that_are_no_technician_may_not_open_one(world):
    r = open_(world, who="psa")
    assert r.status_code == 403
    assert refusals() == ["role may not open sessions"]


def test_bad_input_names_the_field(world):
    assert "session_type" in open_(world, session_type="desktop").json()
    r = open_(world, provider="nosuch")
    assert r.status_code == 400 and "provider" in r.json()
    assert not RemoteSession.objects.exists()


def test_a_site_whose_policy_allows_no_sessions_refuses_them(world):
    set_policy(world, allowed=False)
    r = open_(world)
    assert r.status_code == 403 and "allows no remote sessions" in r.json()["detail"]
    assert refusals() == ["This site's policy allows no remote sessions"]


def test_a_privileged_session_waits_for_an_approver_who_is_not_its_requester(world):
    r = open_(world, privileged=True)
    assert r.status_code == 201 and r.json()["status"] == "awaiting_approval"
    sid = r.json()["id"]
    assert not Instruction.objects.exists()
    admin_open = open_(world, who="admin", privileged=True).json()["id"]
    # its requester may not approve it, even an admin
    assert world["admin"].post(f"{URL}{admin_open}/approve/").status_code == 403
    assert refusals("job.approve") == ["self-approval"]
    r = world["approver"].post(f"{URL}{sid}/approve/")
    assert r.status_code == 200 and r.json()["status"] == "queued"
    (step,) = Instruction.objects.filter(job_id=sid)
    assert step.privileged is True


def test_a_site_policy_that_asks_for_approval_and_a_rejection_ends_the_session(world):
    set_policy(world, approval_required=True)
    sid = open_(world).json()["id"]
    assert RemoteSession.objects.get(pk=sid).status == "awaiting_approval"
    r = world["approver"].post(f"{URL}{sid}/reject/", {"reason": "not during the audit"}, format="json")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "rejected" and body["end_reason"] == "rejected" and body["ended_at"]
    assert world["approver"].post(f"{URL}{sid}/approve/").status_code == 409


def test_ending_a_session_is_recorded_told_to_the_psa_and_a_second_end_is_a_conflict(world):
    sid = open_(world).json()["id"]
    assert world["other_tech"].post(f"{URL}{sid}/end/").status_code == 403
    r = world["tech"].post(f"{URL}{sid}/end/")
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["end_reason"] == "user" and body["ended_by"] == "tech" and body["ended_at"]
    assert body["status"] == "aborted"  # its step never ran
    ended = HistoryEvent.objects.get(action="session.ended", subject_id=sid)
    assert ended.payload["reason"] == "user" and ended.payload["psa_task_id"] == str(world["task"].pk)
    told = Event.objects.get(type="session.ended", subject_id=sid)
    assert told.data["reason"] == "user" and told.data["psa_case_id"] == str(world["task"].case_id)
    assert world["tech"].post(f"{URL}{sid}/end/").status_code == 409
    assert refusals("remote_session.end") == [
        "only its technician or an admin may end a session",
        "the session has ended",
    ]


def test_an_admin_ends_any_session(world):
    sid = open_(world).json()["id"]
    r = world["admin"].post(f"{URL}{sid}/end/")
    assert r.status_code == 200 and r.json()["end_reason"] == "admin" and r.json()["ended_by"] == "admin"


def test_sessions_are_listed_and_shown_per_site(world, caller, other_site):
    sid = open_(world).json()["id"]
    outsider = caller("outsider", "technician", sites=[other_site])
    assert [row["id"] for row in world["tech"].get(URL).json()["results"]] == [sid]
    assert outsider.get(URL).json()["results"] == []
    assert outsider.get(f"{URL}{sid}/").status_code == 404
    assert outsider.post(f"{URL}{sid}/end/").status_code == 404
    assert RemoteSession.objects.get(pk=sid).ended_at is None


def test_the_kill_switch_ends_sessions_in_its_scope_and_refuses_new_ones(world):
    sid = open_(world).json()["id"]
    RemoteSession.objects.filter(pk=sid).update(started_at=timezone.now())
    r = world["tech"].post(
        "/api/v1/kill-switches/", {"scope": "site", "target": "alpha", "reason": "incident"}, format="json"
    )
    assert r.status_code == 201, r.content
    session = RemoteSession.objects.get(pk=sid)
    assert session.end_reason == "kill_switch" and session.ended_at is not None
    assert open_(world).status_code == 403


@pytest.mark.parametrize(
    ("rules", "reason"),
    [({"max_duration_seconds": 1, "idle_timeout_seconds": 1}, "max_duration"), ({"idle_timeout_seconds": 1}, "idle")],
)
def test_a_session_past_its_maximum_duration_or_idle_timeout_ends(world, rules, reason):
    set_policy(world, **rules)
    sid = open_(world).json()["id"]
    now = timezone.now()
    RemoteSession.objects.filter(pk=sid).update(started_at=now - timedelta(seconds=2), last_activity_at=now)
    if reason == "idle":
        RemoteSession.objects.filter(pk=sid).update(last_activity_at=now - timedelta(seconds=2))
    assert services.end_overdue(now) == 1
    assert RemoteSession.objects.get(pk=sid).end_reason == reason
    assert services.end_overdue(now) == 0


def test_the_minutes_schedule_ends_a_session_whose_relay_is_gone(world):
    """No relay timer runs for a session whose worker stopped: django-q2's schedule ends it."""
    set_policy(world, max_duration_seconds=60, idle_timeout_seconds=60)
    sid = open_(world).json()["id"]
    RemoteSession.objects.filter(pk=sid).update(started_at=timezone.now() - timedelta(minutes=5))
    schedule = Schedule.objects.get(name="sessions.end_overdue")
    assert (schedule.schedule_type, schedule.minutes, schedule.repeats) == ("I", 1, -1)
    assert import_string(schedule.func)() == 1
    assert RemoteSession.objects.get(pk=sid).end_reason == "max_duration"


def test_the_sweep_reads_every_live_sessions_policy_in_one_query(world, caller, other_site, django_assert_num_queries):
    """A site with its own policy and one with the defaults: one query, however many sessions."""
    set_policy(world, idle_timeout_seconds=600)
    ids = [open_(world).json()["id"] for _ in range(2)]
    ids.append(
        open_(
            world,
            asset=str(world["elsewhere"]),
            psa_task_id=str(approved_authority(other_site, world["psa"].user).pk),
            who="admin",
        ).json()["id"]
    )
    RemoteSession.objects.filter(pk__in=ids).update(started_at=timezone.now())
    with django_assert_num_queries(1):
        assert services.end_overdue() == 0
    assert RemoteSession.objects.filter(pk__in=ids, ended_at__isnull=True).count() == 3


def test_an_agent_is_online_within_the_offline_cut_off_and_a_retired_asset_takes_no_session(world, settings):
    agent = Agent.objects.get(pk=world["agent"].pk)
    now = timezone.now()
    cut_off = timedelta(seconds=settings.RMM_AGENT_OFFLINE_SECONDS)
    assert agent.is_online(agent.last_seen_at + cut_off) and not agent.is_online(agent.last_seen_at + cut_off * 2)
    agent.offline_since = now
    assert not agent.is_online(now)
    Asset.objects.filter(pk=world["asset"]).update(retired_at=now)
    r = open_(world)
    assert r.status_code == 409 and r.json() == {"asset": ["The asset is retired."]}
    assert not RemoteSession.objects.exists()


def stepless_and_live(world) -> str:
    """A session live without a step of the RMM agent's, as a provider that reaches the endpoint by
    its own means (MeshCentral) leaves it: its job running, no instruction."""
    sid = open_(world).json()["id"]
    Instruction.objects.filter(job_id=sid).delete()
    RemoteSession.objects.filter(pk=sid).update(status="running", started_at=timezone.now())
    return sid


def ended_for_authority(sid: str) -> None:
    session = RemoteSession.objects.get(pk=sid)
    assert session.end_reason == "authority" and session.ended_at is not None and session.status == "aborted"
    ended = HistoryEvent.objects.get(action="session.ended", subject_id=sid)
    assert ended.payload["reason"] == "authority"
    assert Event.objects.get(type="session.ended", subject_id=sid).data["reason"] == "authority"


@pytest.mark.parametrize("withdraw", ["task closed", "case rejected"])
def test_withdrawing_the_authority_ends_a_live_session(world, withdraw):
    """Law 1 after the session opened: the PSA withdraws its task or case, the session ends."""
    from rmm.authority import services as authority

    sid = stepless_and_live(world)
    task, psa = world["task"], world["psa"].user
    if withdraw == "task closed":
        authority.upsert_task(psa, task.pk, case_id=task.case_id, title=task.title, status="closed")
    else:
        case = task.case
        authority.upsert_case(psa, case.pk, title=case.title, status="rejected", site_name=world["site"].name)
    ended_for_authority(sid)


def test_a_live_session_ends_when_its_task_expires(world):
    from rmm.authority.models import PsaTask
    from rmm.engine.services import stopping

    sid = stepless_and_live(world)
    PsaTask.objects.filter(pk=world["task"].pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert stopping.withdraw_expired_authority() == 1
    ended_for_authority(sid)
    assert stopping.withdraw_expired_authority() == 0  # nothing left under it


def test_a_failing_withdrawal_hook_is_recorded_and_spares_the_sessions(world, monkeypatch):
    """Each app's withdrawal hook runs even when another one fails before it; the withdrawal stands."""
    from rmm.authority import services as authority
    from rmm.engine.services import stopping

    def broken(key, value, actor, reason):
        raise RuntimeError("the rollout service is unreachable")

    monkeypatch.setattr(stopping, "_WITHDRAWAL_HOOKS", [(lambda key: [], broken), *stopping._WITHDRAWAL_HOOKS])
    sid = stepless_and_live(world)
    task = world["task"]
    authority.upsert_task(world["psa"].user, task.pk, case_id=task.case_id, title=task.title, status="closed")
    ended_for_authority(sid)
    (failed,) = HistoryEvent.objects.filter(action="authority.withdrawal_hook_failed")
    assert failed.payload["hook"].endswith("broken") and "unreachable" in failed.payload["error"]
    assert failed.payload["psa_task_id"] == str(task.pk)


@pytest.fixture
def listener():
    """A TCP server on 127.0.0.1 that counts the connections made to it and answers none: where a
    remote-access server would be."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def test_a_provider_is_asked_nothing_for_a_request_without_authority_or_under_a_kill_switch(world, settings, listener):
    """The provider's checks come after the engine's laws: a request without authority, or under an
    engaged kill switch, never reaches the remote-access server; one with authority does."""
    port, accepted = listener
    settings.RMM_MESHCENTRAL_URL = f"http://127.0.0.1:{port}"
    settings.RMM_MESHCENTRAL_USER, settings.RMM_MESHCENTRAL_PASSWORD = "broker", "unused"
    settings.RMM_MESHCENTRAL_TIMEOUT_SECONDS = 1
    meshcentral.configure()
    try:
        mc = {"session_type": "remote_control", "provider": "meshcentral"}
        r = open_(world, **mc, psa_task_id="00000000-0000-0000-0000-000000000000")
        assert r.status_code == 400 and "No authority" in r.json()["psa_task_id"][0], r.content
        kill_switches.engage(world["tech"].user, scope="asset", target=str(world["asset"]), reason="incident")
        r = open_(world, **mc)
        assert r.status_code == 403 and "kill switch is engaged" in r.json()["detail"], r.content
        assert accepted == []
        kill_switches.release(world["approver"].user, KillSwitch.objects.get(), "handled")
        r = open_(world, **mc)
        assert r.status_code == 409 and "cannot reach MeshCentral" in r.json()["provider"][0], r.content
        assert len(accepted) >= 1
        assert not RemoteSession.objects.exists()
    finally:
        providers.unregister("meshcentral")


class FailingProvider(providers.Provider):
    """A provider whose start fails in a way it did not foresee (not a refusal of its own)."""

    name = "failing"
    session_types = ("remote_control",)
    records_itself = True

    def start(self, session) -> str:
        raise RuntimeError("the remote-access server's library crashed")

    def end(self, session, reason: str) -> None:
        pass


def test_a_provider_that_fails_to_start_ends_its_session_and_answers_409(world):
    providers.register(FailingProvider())
    try:
        r = open_(world, session_type="remote_control", provider="failing")
    finally:
        providers.unregister("failing")
    assert r.status_code == 409 and "library crashed" in r.json()["provider"][0], r.content
    session = RemoteSession.objects.get()
    assert session.ended_at is not None and session.end_reason == "provider"
    assert HistoryEvent.objects.filter(action="session.ended", subject_id=str(session.pk)).exists()
