"""Enforcement through the engine (issue 15, part 5): drift on an enforce-mode item of an approved
assignment makes a ``profile_enforce`` job on the assignment's PSA task, covered by the
assignment's approval; until then drift is reported and the history says why it was not enforced.
The rendered instruction is run for real by sh (a set script, then a fresh read); the item is
compliant only when the re-read says so, never because the set script exited 0. Authority
withdrawn and kill switches stop it like any job; the API is restricted to the caller's sites."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.utils import timezone

from evidence.models import RmmEvidence
from evidence.services import read_blob
from profiles import assignments, audits, enforcement
from profiles import services as profiles
from profiles.models import (
    AssetConfigurationProfile,
    ConfigurationDriftEvent,
    ConfigurationEnforcementJob,
    ConfigurationObservation,
)
from rmm.authority.models import PsaTask
from rmm.engine import services as engine
from rmm.engine.models import Instruction
from rmm.engine.services import kill_switches
from rmm.history.models import HistoryEvent
from rmm.inventory import services as inventory
from rmm_agent.results import make_result
from tests.e2e.psa import PsaReceiver
from tests.helpers import approved_authority, make_agent
from tests.profiles.test_audits import document
from tests.support.kind_examples import EnforcementExample, World
from tests.support.profiles import approved_key

FILE_READ = '[ -f "$RMM_PARAM_PATH" ] || exit 3\ncat "$RMM_PARAM_PATH"\n'
FILE_SET = 'printf "%s\\n" "$RMM_DESIRED_VALUE" > "$RMM_PARAM_PATH"\n'
NOOP_SET = "echo done\n"  # exits 0 and changes nothing
FAILING_SET = "echo permission denied >&2\nexit 1\n"


@pytest.fixture
def w(caller, site, other_site, settings):
    settings.RMM_TASKS_SYNC = True  # the audit's result hands drift to enforcement through a task
    receiver = PsaReceiver()  # the PSA, told of drift on 127.0.0.1
    settings.RMM_PSA_WEBHOOK_URL, settings.RMM_PSA_WEBHOOK_SECRET = receiver.url, receiver.secret
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    agent, _ = make_agent(site, "web-01")
    task = approved_authority(site, psa.user)
    for name, set_content in (("test.file", FILE_SET), ("test.noop", NOOP_SET), ("test.failing", FAILING_SET)):
        approved_key(
            tech.user,
            boss.user,
            name=name,
            comparisons=("equals",),
            read=FILE_READ,
            parameters=("path",),
            set_content=set_content,
        )
    yield SimpleNamespace(
        site=site, other_site=other_site, psa=psa, tech=tech, boss=boss, agent=agent, task=task, receiver=receiver
    )
    receiver.close()


def enforced_profile(w, key: str = "test.file", path: str = "/nonexistent/value", mode: str = "enforce"):
    return profiles.create_profile(
        w.tech.user,
        name=f"enforced-{key}",
        profile_type="hardening",
        items=[
            {
                "config_key": key,
                "parameters": {"path": path},
                "desired_value": "wanted",
                "comparison": "equals",
                "enforcement_mode": mode,
            }
        ],
    )


def approved_assignment(w, profile) -> AssetConfigurationProfile:
    """Assigned by the technician, approved by the approver (the service's four eyes)."""
    assignment = assignments.create_assignment(
        w.tech.user, profile_id=profile.pk, asset_id=w.agent.asset_id, site_id=None, psa_task_id=w.task.pk
    )
    assert assignment.status == "awaiting_approval"
    return assignments.approve_assignment(assignment, w.boss.user)


def audit(w, assignment, value: bytes, capture) -> None:
    """An audit of the assignment whose read finds ``value`` for its one item, taken in as the
    agent reports it; what it hands to enforcement runs at its commit."""
    item = assignment.profile.current_revision.items.get()
    with capture(execute=True):
        [job] = audits.request_audit(w.psa.user, assignment.pk)
        [inst] = [i for i in engine.lease(w.agent, 4, timezone.now()) if i.job_id == job.pk]
        body = make_result(str(inst.pk), "completed", exit_code=0, stdout=document({item: (0, value)}))
        assert engine.ingest_result(w.agent, body) == (201, {"status": "accepted"})


def run_for_real(w, tmp_path, job) -> subprocess.CompletedProcess:
    """Lease the enforcement's instruction and run its signed content with its signed arguments
    by sh, as the agent would, then report what it printed."""
    [inst] = engine.lease(w.agent, 4, timezone.now())
    assert inst.job_id == job.pk
    (tmp_path / "run.sh").write_text(inst.content)
    done = subprocess.run(
        ["sh", "run.sh", *inst.arguments], cwd=tmp_path, env={"PATH": os.environ["PATH"]}, capture_output=True
    )
    body = make_result(str(inst.pk), "completed", exit_code=done.returncode, stdout=done.stdout, stderr=done.stderr)
    assert engine.ingest_result(w.agent, body) == (201, {"status": "accepted"})
    return done


def test_until_the_assignment_is_approved_drift_is_reported_not_enforced(w, django_capture_on_commit_callbacks):
    profile = enforced_profile(w)
    assignment = assignments.create_assignment(
        w.tech.user, profile_id=profile.pk, asset_id=w.agent.asset_id, site_id=None, psa_task_id=w.task.pk
    )
    assert assignment.status == "awaiting_approval"

    audit(w, assignment, b"unwanted\n", django_capture_on_commit_callbacks)

    assert not ConfigurationEnforcementJob.objects.exists()
    [drift] = ConfigurationDriftEvent.objects.all()
    assert (drift.to_state, drift.observed_value) == ("non_compliant", "unwanted")
    assert [r["body"]["event"] for r in w.receiver.received].count("drift.detected") == 1
    [withheld] = HistoryEvent.objects.filter(action="profile.enforcement_withheld")
    assert withheld.subject_id == str(assignment.pk)
    assert withheld.payload["reason"] == "the assignment is awaiting_approval"

    # Approved by a second person: the next audit that finds it still drifted enforces it.
    assignments.approve_assignment(assignment, w.boss.user)
    audit(w, AssetConfigurationProfile.objects.get(pk=assignment.pk), b"unwanted\n", django_capture_on_commit_callbacks)
    [job] = ConfigurationEnforcementJob.objects.all()
    assert (job.status, job.before_value, job.before_state) == ("queued", "unwanted", "non_compliant")


def test_the_assignments_approval_covers_the_job_which_queues_on_its_task(
    w, caller, settings, django_capture_on_commit_callbacks
):
    # An admin wrote the task it assigns the profile under, and this site wants a second person
    # for such jobs: the approver's decision on the assignment is that second person.
    admin = caller("admin", "admin").user
    w.task = approved_authority(w.site, admin, self_authorized_jobs=False)
    inventory.set_site_policy("cli:rmm_site_policy", w.site, allow_self_authorized_jobs=False)
    profile = enforced_profile(w)
    assignment = assignments.create_assignment(
        admin, profile_id=profile.pk, asset_id=w.agent.asset_id, site_id=None, psa_task_id=w.task.pk
    )
    assignment = assignments.approve_assignment(assignment, w.boss.user)
    audit(w, assignment, b"unwanted\n", django_capture_on_commit_callbacks)

    [job] = ConfigurationEnforcementJob.objects.all()
    assert (job.status, job.psa_task_id, job.requested_by, job.decided_by) == (
        "queued",
        w.task.pk,
        admin,
        w.boss.user,
    )
    item = profile.current_revision.items.get()
    assert (job.item_id, job.assignment_id, job.before_evidence_id) == (
        item.pk,
        assignment.pk,
        ConfigurationObservation.objects.get(item=item).evidence_id,
    )
    created = HistoryEvent.objects.get(action="job.created", subject_id=str(job.pk))
    assert created.payload["kind"] == "profile_enforce" and created.payload["approved_by"] == "boss"
    assert "self_authorized" not in created.payload
    [inst] = Instruction.objects.filter(job_id=job.pk)
    assert inst.job_kind == "profile_enforce" and inst.arguments == [str(item.pk), "equals", "string", "wanted"]
    assert item.config_key.set_script.content in inst.content and item.config_key.read_script.content in inst.content

    # A second audit while it is still active makes no second job for the same item.
    settings.RMM_MAX_RUNNING_PER_ASSET = 2  # the audit runs beside it
    audit(w, assignment, b"unwanted\n", django_capture_on_commit_callbacks)
    assert ConfigurationEnforcementJob.objects.count() == 1


def test_an_approval_by_the_requester_covers_nothing(w):
    """Law 8 in the engine: an approval that names the requester leaves the job to the gates (the
    kind contract's example: the PSA account wrote the task, requests the job and "approved" the
    assignment; the site wants a second person)."""
    world = World(w.site, w.psa.user, w.tech.user, w.boss.user, w.task, w.agent)
    job = EnforcementExample().make(world, requires_approval=True)
    assert (job.status, job.decided_by) == ("awaiting_approval", None)
    assert HistoryEvent.objects.get(action="job.created", subject_id=str(job.pk)).payload["self_authorized"] is True


def test_set_then_fresh_read_makes_it_compliant_with_evidence_of_before_action_after(
    w, tmp_path, django_capture_on_commit_callbacks
):
    target = tmp_path / "value"
    target.write_text("unwanted\n")
    profile = enforced_profile(w, path=str(target))
    assignment = approved_assignment(w, profile)
    audit(w, assignment, b"unwanted\n", django_capture_on_commit_callbacks)
    [job] = ConfigurationEnforcementJob.objects.all()

    with django_capture_on_commit_callbacks(execute=True):
        run_for_real(w, tmp_path, job)

    assert target.read_text() == "wanted\n"
    job.refresh_from_db()
    assert (job.status, job.status_reason, job.after_value, job.after_state) == ("succeeded", "", "wanted", "compliant")
    item = profile.current_revision.items.get()
    observation = ConfigurationObservation.objects.get(item=item)
    [record] = RmmEvidence.objects.filter(related_id=job.pk)
    assert (observation.state, observation.enforcement_job_id, observation.audit_job_id, observation.evidence_id) == (
        "compliant",
        job.pk,
        None,
        record.pk,
    )
    assert (record.evidence_type, record.related_entity, record.psa_task_id) == (
        "enforcement_result",
        "configuration_enforcement_job",
        w.task.pk,
    )
    evidence = json.loads(read_blob(record))
    assert evidence["before"]["observed_value"] == "unwanted" and evidence["before"]["audit_job"] == str(
        job.audit_job_id
    )
    assert evidence["before"]["evidence"] == str(job.before_evidence_id)
    set_script = item.config_key.set_script
    assert evidence["action"]["set_script"] == {
        "id": str(set_script.pk),
        "name": set_script.name,
        "version": set_script.version,
        "sha256": set_script.sha256,
    }
    assert (evidence["action"]["parameters"], evidence["action"]["desired_value"]) == ({"path": str(target)}, "wanted")
    assert evidence["action"]["run"]["exit_code"] == 0
    assert (evidence["after"]["observed_value"], evidence["after"]["state"]) == ("wanted", "compliant")
    assert evidence["job"]["approved_by"] == "boss" and evidence["instruction"]["payload"]
    # Compliant again: one drift event back, which cites this record, and drift.resolved to the PSA.
    resolved = ConfigurationDriftEvent.objects.get(to_state="compliant")
    assert (resolved.enforcement_job_id, resolved.audit_job_id, resolved.evidence_id) == (job.pk, None, record.pk)
    [told] = [r["body"] for r in w.receiver.received if r["body"]["event"] == "drift.resolved"]
    assert told["evidence_id"] == str(record.pk) and told["enforcement_job"] == str(job.pk)
    assert HistoryEvent.objects.filter(action="profile.drift_resolved").count() == 1


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("test.noop", "the set script exited 0 but the re-read is non_compliant: 'unwanted' (equals 'wanted')"),
        ("test.failing", "the set script exited 1: permission denied"),
    ],
    ids=["exit-0-changes-nothing", "set-script-fails"],
)
def test_the_set_scripts_exit_code_proves_nothing_the_re_read_decides(
    w, tmp_path, django_capture_on_commit_callbacks, key, reason
):
    target = tmp_path / "value"
    target.write_text("unwanted\n")
    profile = enforced_profile(w, key=key, path=str(target))
    assignment = approved_assignment(w, profile)
    audit(w, assignment, b"unwanted\n", django_capture_on_commit_callbacks)
    [job] = ConfigurationEnforcementJob.objects.all()

    with django_capture_on_commit_callbacks(execute=True):
        done = run_for_real(w, tmp_path, job)

    assert done.returncode == 0 and target.read_text() == "unwanted\n"
    job.refresh_from_db()
    assert (job.status, job.status_reason, job.after_state) == ("failed", reason, "non_compliant")
    observation = ConfigurationObservation.objects.get(asset=w.agent.asset)
    assert (observation.state, observation.enforcement_job_id) == ("non_compliant", job.pk)
    assert not ConfigurationDriftEvent.objects.filter(to_state="compliant").exists()
    evidence = json.loads(read_blob(RmmEvidence.objects.get(related_id=job.pk)))
    assert evidence["failure"] == reason and evidence["after"]["compliant"] is False
    assert HistoryEvent.objects.filter(action="job.failed", subject_id=str(job.pk)).exists()


def test_unreadable_output_fails_the_enforcement_and_the_item_is_an_error(w, django_capture_on_commit_callbacks):
    profile = enforced_profile(w)
    assignment = approved_assignment(w, profile)
    audit(w, assignment, b"unwanted\n", django_capture_on_commit_callbacks)
    [job] = ConfigurationEnforcementJob.objects.all()
    [inst] = engine.lease(w.agent, 4, timezone.now())
    body = make_result(str(inst.pk), "completed", exit_code=0, stdout=b"all done\n")
    assert engine.ingest_result(w.agent, body)[0] == 201
    job.refresh_from_db()
    assert (job.status, job.status_reason) == ("failed", "the output is not an enforcement document")
    observation = ConfigurationObservation.objects.get(asset=w.agent.asset)
    assert (observation.state, observation.known_state) == ("error", "non_compliant")


def test_no_enforcement_when_the_assignments_task_expired_and_it_is_recorded(w, django_capture_on_commit_callbacks):
    profile = enforced_profile(w)
    assignment = approved_assignment(w, profile)
    [audit_job] = audits.request_audit(w.psa.user, assignment.pk)
    [inst] = engine.lease(w.agent, 4, timezone.now())
    # The task expires while the audit runs; its result is still taken in (what the endpoint read
    # is kept), but no enforcement runs on authority that is gone.
    PsaTask.objects.filter(pk=w.task.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    item = profile.current_revision.items.get()
    with django_capture_on_commit_callbacks(execute=True):
        body = make_result(str(inst.pk), "completed", exit_code=0, stdout=document({item: (0, b"unwanted\n")}))
        assert engine.ingest_result(w.agent, body)[0] == 201
    assert ConfigurationObservation.objects.get(item=item).state == "non_compliant"
    assert not ConfigurationEnforcementJob.objects.exists()
    [refused] = HistoryEvent.objects.filter(action="refused.profile_enforce_job.create")
    assert refused.payload["reason"].startswith("no authority") and refused.payload["item"] == str(item.pk)

    # The minute's sweep stops the assignment; a later hand-off is withheld, and says so.
    assert assignments.stop_unauthorised_assignments() == 1
    assert enforcement.enforce_drift(audit_job.pk) == []
    withheld = HistoryEvent.objects.get(action="profile.enforcement_withheld")
    assert withheld.payload["reason"] == "the assignment is stopped"


def test_a_kill_switch_engaged_refuses_the_job_and_stops_a_queued_one(w, django_capture_on_commit_callbacks):
    profile = enforced_profile(w)
    assignment = approved_assignment(w, profile)
    [audit_job] = audits.request_audit(w.psa.user, assignment.pk)
    [inst] = engine.lease(w.agent, 4, timezone.now())
    item = profile.current_revision.items.get()
    kill_switches.engage(w.boss.user, scope="asset", target=str(w.agent.asset_id), reason="incident")
    with django_capture_on_commit_callbacks(execute=True):
        body = make_result(str(inst.pk), "completed", exit_code=0, stdout=document({item: (0, b"unwanted\n")}))
        engine.ingest_result(w.agent, body)
    assert not ConfigurationEnforcementJob.objects.exists()
    [refused] = HistoryEvent.objects.filter(action="refused.profile_enforce_job.create")
    assert refused.payload["reason"].startswith("kill switch engaged")

    # Released, the drift is enforced; engaged again before the agent leases it, the job never runs.
    switch = kill_switches.engaged_visible_to(w.boss.user).get()
    kill_switches.release(w.boss.user, switch, "over")
    [job] = enforcement.enforce_drift(audit_job.pk)
    assert job.status == "queued"
    kill_switches.engage(w.boss.user, scope="site", target=w.site.name, reason="incident again")
    assert engine.lease(w.agent, 4, timezone.now()) == []
    job.refresh_from_db()
    assert job.status == "aborted"


def test_an_audit_mode_item_is_never_enforced(w, django_capture_on_commit_callbacks):
    profile = enforced_profile(w, mode="audit")
    assignment = assignments.create_assignment(
        w.tech.user, profile_id=profile.pk, asset_id=w.agent.asset_id, site_id=None, psa_task_id=w.task.pk
    )
    assert assignment.status == "active"
    audit(w, assignment, b"unwanted\n", django_capture_on_commit_callbacks)
    assert not ConfigurationEnforcementJob.objects.exists()
    assert not HistoryEvent.objects.filter(action="profile.enforcement_withheld").exists()


def test_the_api_lists_enforcement_jobs_of_your_sites_filtered(w, caller, django_capture_on_commit_callbacks):
    profile = enforced_profile(w)
    assignment = approved_assignment(w, profile)
    audit(w, assignment, b"unwanted\n", django_capture_on_commit_callbacks)
    [job] = ConfigurationEnforcementJob.objects.all()

    r = w.psa.get(f"/api/v1/enforcement-jobs/?asset={w.agent.asset_id}&assignment={assignment.pk}&status=queued")
    assert r.status_code == 200
    [row] = r.json()["results"]
    assert (row["id"], row["config_key"], row["before_value"], row["approved_by"], row["status"]) == (
        str(job.pk),
        "test.file",
        "unwanted",
        "boss",
        "queued",
    )
    assert w.psa.get("/api/v1/enforcement-jobs/?status=failed").json()["results"] == []
    detail = w.psa.get(f"/api/v1/enforcement-jobs/{job.pk}/").json()
    assert detail["item"] == str(job.item_id) and detail["psa_task_id"] == str(w.task.pk)
    assert w.psa.get("/api/v1/enforcement-jobs/?status=nonsense").status_code == 400

    outsider = caller("outsider", "technician", sites=[w.other_site])
    assert outsider.get(f"/api/v1/enforcement-jobs/{job.pk}/").status_code == 404
    assert outsider.get("/api/v1/enforcement-jobs/").json()["results"] == []
    jobs = w.psa.get("/api/v1/jobs/?kind=profile_enforce").json()["results"]
    assert [j["id"] for j in jobs] == [str(job.pk)]
