"""Audits through the engine: requested for an assignment, leased and reported as an agent does,
compared on the server into observations (actual state, one row per asset and item), drift as a
change of compliance (an event and a history record per change, never per audit), a drift_report
and drift.detected to a real PSA receiver on 127.0.0.1, a constant number of queries per result,
and the API restricted to the caller's sites."""

from __future__ import annotations

import base64
import importlib
import json
import os
import subprocess
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from evidence.models import RmmEvidence
from evidence.services import read_blob
from profiles import audits, compliance, counts
from profiles import services as profiles
from profiles.models import (
    AssetConfigurationProfile,
    ComplianceCount,
    ConfigurationAuditJob,
    ConfigurationDriftEvent,
    ConfigurationObservation,
)
from rmm.access import roles as access
from rmm.engine import services as engine
from rmm.engine.models import Instruction
from rmm.engine.services import kill_switches
from rmm.history.models import HistoryEvent
from rmm.outbox.models import Event
from rmm_agent.results import make_result
from tests.e2e.psa import PsaReceiver
from tests.helpers import approved_authority, make_agent
from tests.support.profiles import approved_key

ECHO_READ = 'printf "%s\\n" "$RMM_PARAM_VALUE"\n'


@pytest.fixture
def w(caller, site, other_site):
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    agent, _ = make_agent(site, "web-01")
    task = approved_authority(site, psa.user)
    approved_key(tech.user, boss.user, name="test.echo", read=ECHO_READ, parameters=("value",))
    approved_key(
        tech.user,
        boss.user,
        name="test.number",
        value_type="integer",
        comparisons=("equals", "at_least"),
        read=ECHO_READ,
        parameters=("value",),
    )
    return SimpleNamespace(site=site, other_site=other_site, psa=psa, tech=tech, boss=boss, agent=agent, task=task)


def profile_of(w, count: int = 2, name: str = "baseline"):
    """``count`` string items wanting ``value-<n>`` (equals), each read back from its parameter."""
    return profiles.create_profile(
        w.tech.user,
        name=name,
        profile_type="hardening",
        items=[
            {
                "config_key": "test.echo",
                "parameters": {"value": "p"},
                "desired_value": f"value-{n}",
                "comparison": "equals",
            }
            for n in range(count)
        ],
    )


def assign(w, profile, *, asset=None, site=None, status="active"):
    return AssetConfigurationProfile.objects.create(
        profile=profile,
        asset=asset if site is None else None,
        site=site,
        psa_task=w.task,
        status=status,
        requested_by=w.tech.user,
    )


def items_of(profile):
    return list(profile.current_revision.items.order_by("position"))


def document(values: dict) -> bytes:
    """The audit document an endpoint sends: ``{item: (exit code, stdout bytes)}``."""
    entries = [
        {
            "item": str(item.pk),
            "exit_code": code,
            "stdout_bytes": len(out),
            "stdout": base64.b64encode(out).decode(),
            "stderr": "",
        }
        for item, (code, out) in values.items()
    ]
    return json.dumps({"format": "rmm.profile_audit/1", "items": entries}).encode()


def audit(w, assignment, values: dict | None = None, *, stdout: bytes | None = None, agent=None):
    """Request an audit, lease it as the agent, report ``values`` (or ``stdout``); the job."""
    agent = agent or w.agent
    [job] = audits.request_audit(w.psa.user, assignment.pk)
    [inst] = engine.lease(agent, 4, timezone.now())
    body = make_result(
        str(inst.pk), "completed", exit_code=0, stdout=stdout if stdout is not None else document(values)
    )
    assert engine.ingest_result(agent, body) == (201, {"status": "accepted"})
    return ConfigurationAuditJob.objects.get(pk=job.pk)


def observed(w, profile) -> list[tuple]:
    rows = ConfigurationObservation.objects.filter(asset_id=w.agent.asset_id, profile_revision=profile.current_revision)
    return list(rows.order_by("item__position").values_list("state", "observed_value", "compliant"))


def test_an_audit_is_one_job_whose_one_instruction_reads_every_item(w):
    profile = profile_of(w, 3)
    assignment = assign(w, profile, asset=w.agent.asset)
    [job] = audits.request_audit(w.psa.user, assignment.pk)
    assert (job.status, job.assignment_id, job.profile_revision_id) == (
        "queued",
        assignment.pk,
        profile.current_revision_id,
    )
    [inst] = Instruction.objects.filter(job_id=job.pk)
    assert inst.job_kind == "profile_audit" and inst.privileged is False and inst.interpreter == "sh"
    assert all(str(item.pk) in inst.content for item in items_of(profile))
    created = HistoryEvent.objects.get(action="job.created", subject_id=str(job.pk))
    assert created.payload["kind"] == "profile_audit" and created.payload["assignment"] == str(assignment.pk)


def test_the_rendered_script_run_for_real_gives_observations(w, tmp_path):
    """Full circle: the signed instruction's content run by sh, its stdout reported."""
    profile = profiles.create_profile(
        w.tech.user,
        name="real",
        profile_type="t",
        items=[
            {"config_key": "test.echo", "parameters": {"value": "yes"}, "desired_value": "yes", "comparison": "equals"},
            {
                "config_key": "test.number",
                "parameters": {"value": "7"},
                "desired_value": "10",
                "comparison": "at_least",
            },
        ],
    )
    assignment = assign(w, profile, asset=w.agent.asset)
    [job] = audits.request_audit(w.psa.user, assignment.pk)
    [inst] = engine.lease(w.agent, 4, timezone.now())
    (tmp_path / "run.sh").write_text(inst.content)
    done = subprocess.run(["sh", "run.sh"], cwd=tmp_path, env={"PATH": os.environ["PATH"]}, capture_output=True)
    body = make_result(str(inst.pk), "completed", exit_code=done.returncode, stdout=done.stdout)
    assert engine.ingest_result(w.agent, body)[0] == 201
    assert ConfigurationAuditJob.objects.get(pk=job.pk).status == "succeeded"
    assert observed(w, profile) == [("compliant", "yes", True), ("non_compliant", "7", False)]


def test_drift_is_a_change_of_compliance_with_an_event_and_history_each_not_one_per_audit(w):
    profile = profile_of(w, 2)
    first, second = items_of(profile)
    assignment = assign(w, profile, asset=w.agent.asset)
    both_ok = {first: (0, b"value-0\n"), second: (0, b"value-1\n")}

    audit(w, assignment, both_ok)  # a first reading that complies: nothing to report
    assert observed(w, profile) == [("compliant", "value-0", True), ("compliant", "value-1", True)]
    assert not ConfigurationDriftEvent.objects.exists() and not HistoryEvent.objects.filter(action="profile.drift")

    drifted = audit(w, assignment, {first: (0, b"changed\n"), second: (0, b"value-1\n")})
    [event] = ConfigurationDriftEvent.objects.all()
    assert (event.item_id, event.from_state, event.to_state, event.observed_value) == (
        first.pk,
        "compliant",
        "non_compliant",
        "changed",
    )
    assert event.audit_job_id == drifted.pk and event.profile_id == profile.pk
    [recorded] = HistoryEvent.objects.filter(action="profile.drift")
    assert recorded.payload["item"] == str(first.pk) and recorded.actor == f"agent:{w.agent.pk}"

    audit(w, assignment, {first: (0, b"changed again\n"), second: (0, b"value-1\n")})  # still drifted
    audit(w, assignment, {first: (2, b""), second: (0, b"value-1\n")})  # a read error changes nothing
    assert ConfigurationDriftEvent.objects.count() == 1
    assert observed(w, profile)[0] == ("error", None, None)

    audit(w, assignment, both_ok)  # back to compliant: one more event, the other way
    assert list(ConfigurationDriftEvent.objects.order_by("detected_at").values_list("to_state", flat=True)) == [
        "non_compliant",
        "compliant",
    ]
    assert HistoryEvent.objects.filter(action="profile.drift_resolved").count() == 1
    assert ConfigurationObservation.objects.count() == 2  # one row per (asset, item), updated


def counted(profile) -> tuple:
    """The count row of the profile's current revision on the asset, as the summary sums it."""
    row = ComplianceCount.objects.get(profile_revision=profile.current_revision)
    return row.observed, row.compliant, row.non_compliant, row.errors


def test_each_intake_recounts_the_assets_readings_of_the_revision(w, caller):
    """The count row follows every intake (compliant, drifted, an error, a late result that changes
    nothing) and is what the observations say; the upgrade's backfill and a bulk recount agree."""
    profile = profile_of(w, 3)
    first, second, third = items_of(profile)
    assignment = assign(w, profile, asset=w.agent.asset)
    ok = {first: (0, b"value-0\n"), second: (0, b"value-1\n"), third: (0, b"value-2\n")}
    audit(w, assignment, ok)
    assert counted(profile) == (3, 3, 0, 0)
    audits.request_audit(w.psa.user, assignment.pk)
    [lost] = engine.lease(w.agent, 4, timezone.now())
    engine.sweep(lost.lease_expires_at + timedelta(seconds=1))  # its agent went quiet: lost
    audit(w, assignment, {**ok, first: (0, b"changed\n"), third: (2, b"")})
    assert counted(profile) == (3, 1, 1, 1)
    late = make_result(str(lost.pk), "completed", exit_code=0, stdout=document(ok))
    assert engine.ingest_result(w.agent, late)[1]["status"] == "accepted_late"  # the newer readings stay
    assert counted(profile) == (3, 1, 1, 1)
    summary = compliance.summary(access.visible_sites(w.tech.user), profile=profile)
    assert [(r["observed"], r["compliant_count"], r["non_compliant_count"], r["error_count"]) for r in summary] == [
        (3, 1, 1, 1)
    ]

    ComplianceCount.objects.all().delete()
    backfill = importlib.import_module("profiles.migrations.0009_compliance_counts").BACKFILL
    with connection.cursor() as cursor:
        cursor.execute(backfill)
    assert counted(profile) == (3, 1, 1, 1)
    ComplianceCount.objects.all().delete()
    counts.recount()
    assert counted(profile) == (3, 1, 1, 1)


def test_a_first_non_compliant_reading_is_drift_from_unread(w):
    profile = profile_of(w, 1)
    [item] = items_of(profile)
    audit(w, assign(w, profile, asset=w.agent.asset), {item: (3, b"")})
    [event] = ConfigurationDriftEvent.objects.all()
    assert (event.from_state, event.to_state, event.observed_value) == ("", "non_compliant", None)


def test_drift_leaves_a_drift_report_and_tells_the_psa(w, settings, django_capture_on_commit_callbacks):
    receiver = PsaReceiver()
    settings.RMM_PSA_WEBHOOK_URL, settings.RMM_PSA_WEBHOOK_SECRET = receiver.url, receiver.secret
    settings.RMM_TASKS_SYNC = True
    try:
        profile = profile_of(w, 2)
        first, second = items_of(profile)
        with django_capture_on_commit_callbacks(execute=True):
            job = audit(w, assign(w, profile, asset=w.agent.asset), {first: (0, b"no\n"), second: (0, b"value-1\n")})
    finally:
        receiver.close()
    report = RmmEvidence.objects.get(evidence_type="drift_report")
    assert (report.related_entity, report.related_id, report.psa_task_id) == (
        "configuration_audit_job",
        job.pk,
        w.task.pk,
    )
    document_ = json.loads(read_blob(report))
    assert [(c["item"], c["from_state"], c["to_state"]) for c in document_["changes"]] == [
        (str(first.pk), "", "non_compliant")
    ]
    [told] = [r for r in receiver.received if r["body"]["event"] == "drift.detected"]
    assert told["signed"] and told["body"]["evidence_id"] == str(report.pk)
    assert [i["item"] for i in told["body"]["items"]] == [str(first.pk)] and told["body"]["audit_job"] == str(job.pk)
    # the observations cite the audit's own evidence record, which lists every verdict
    [audit_record] = RmmEvidence.objects.filter(evidence_type="configuration_audit", related_id=job.pk)
    assert set(ConfigurationObservation.objects.values_list("evidence_id", flat=True)) == {audit_record.pk}
    verdicts = json.loads(read_blob(audit_record))["observations"]
    assert [(v["state"], v["observed_value"]) for v in verdicts] == [("non_compliant", "no"), ("compliant", "value-1")]
    assert not Event.objects.filter(type="drift.resolved").exists()


def test_unreadable_output_makes_every_item_an_error_not_drift(w):
    profile = profile_of(w, 2)
    job = audit(w, assign(w, profile, asset=w.agent.asset), stdout=b"}{ not json")
    assert job.status == "succeeded"
    rows = ConfigurationObservation.objects.all()
    assert {row.state for row in rows} == {"error"} and "not an audit document" in rows[0].reason
    assert not ConfigurationDriftEvent.objects.exists()


def ingest_queries(w, count: int, name: str) -> int:
    """Queries taken to ingest one audit result of ``count`` items, every one drifting."""
    profile = profile_of(w, count, name=name)
    assignment = assign(w, profile, asset=w.agent.asset)
    [job] = audits.request_audit(w.psa.user, assignment.pk)
    [inst] = engine.lease(w.agent, 4, timezone.now())
    body = make_result(
        str(inst.pk), "completed", exit_code=0, stdout=document({item: (0, b"x\n") for item in items_of(profile)})
    )
    with CaptureQueriesContext(connection) as ctx:
        assert engine.ingest_result(w.agent, body)[0] == 201
    assert ConfigurationDriftEvent.objects.filter(audit_job_id=job.pk).count() == count
    return len(ctx.captured_queries)


def test_ingesting_a_result_costs_the_same_queries_for_5_and_50_items(w):
    ingest_queries(w, 2, "warm")  # per-process caches
    assert ingest_queries(w, 5, "five") == ingest_queries(w, 50, "fifty")


def test_a_site_assignment_audits_each_active_asset_in_one_batch(w):
    second, _ = make_agent(w.site, "web-02")
    make_agent(w.other_site, "elsewhere")
    assignment = assign(w, profile_of(w), site=w.site)
    r = w.psa.post(f"/api/v1/profile-assignments/{assignment.pk}/audit/")
    assert r.status_code == 202, r.content
    jobs = ConfigurationAuditJob.objects.filter(pk__in=r.json()["jobs"])
    assert {job.asset_id for job in jobs} == {w.agent.asset_id, second.asset_id}
    batch = r.json()["batch"]
    assert batch and {str(job.batch_id) for job in jobs} == {batch}


def test_a_stopped_assignment_is_not_audited(w):
    assignment = assign(w, profile_of(w), asset=w.agent.asset, status="stopped")
    r = w.psa.post(f"/api/v1/profile-assignments/{assignment.pk}/audit/")
    assert r.status_code == 409 and r.json()["status"] == ["The assignment is stopped: it is audited no more."]
    assert not ConfigurationAuditJob.objects.exists()
    assert w.psa.options(f"/api/v1/profile-assignments/{assignment.pk}/audit/").status_code == 200


def test_an_audit_without_authority_is_refused_and_recorded(w):
    assignment = assign(w, profile_of(w), asset=w.agent.asset)
    w.task.status = "withdrawn"
    w.task.save(update_fields=["status"])
    r = w.psa.post(f"/api/v1/profile-assignments/{assignment.pk}/audit/")
    assert r.status_code == 400 and "psa_task_id" in r.json()
    assert HistoryEvent.objects.filter(action="refused.profile_audit_job.create").exists()
    assert not ConfigurationAuditJob.objects.exists()


def test_the_compliance_of_an_asset_shows_desired_and_actual_side_by_side(w):
    profile = profile_of(w, 2)
    first, second = items_of(profile)
    job = audit(w, assign(w, profile, asset=w.agent.asset), {first: (0, b"value-0\n"), second: (3, b"")})
    rows = w.tech.get(f"/api/v1/assets/{w.agent.asset_id}/compliance/").json()
    assert rows["count"] == 2
    evidence_id = str(RmmEvidence.objects.get(related_id=job.pk, evidence_type="configuration_audit").pk)
    assert [
        (r["config_key"], r["desired_value"], r["observed_value"], r["compliant"], r["state"], r["evidence"])
        for r in rows["results"]
    ] == [
        ("test.echo", "value-0", "value-0", True, "compliant", evidence_id),
        ("test.echo", "value-1", None, False, "non_compliant", evidence_id),
    ]
    drift = w.psa.get("/api/v1/drift-events/", {"asset": str(w.agent.asset_id), "profile": str(profile.pk)}).json()
    assert [(d["item"], d["to_state"]) for d in drift["results"]] == [(str(second.pk), "non_compliant")]
    detail = w.psa.get(f"/api/v1/audit-jobs/{job.pk}/").json()
    assert (detail["status"], detail["assignment"], detail["profile_revision"]) == (
        "succeeded",
        str(job.assignment_id),
        1,
    )


def test_observations_of_the_callers_sites_filtered_by_asset_profile_key_and_compliance(w, caller):
    profile, other = profile_of(w, 2), profile_of(w, 1, name="numbers")
    first, second = items_of(profile)
    job = audit(w, assign(w, profile, asset=w.agent.asset), {first: (0, b"value-0\n"), second: (0, b"drifted\n")})
    beta_agent, _ = make_agent(w.other_site, "db-01")
    w.task = approved_authority(w.other_site, w.psa.user)
    audit(w, assign(w, other, asset=beta_agent.asset), {items_of(other)[0]: (2, b"")}, agent=beta_agent)
    url = "/api/v1/configuration-observations/"
    body = w.tech.get(url).json()
    assert body["count"] == 3
    row = next(r for r in body["results"] if r["item"] == str(second.pk))
    evidence_id = str(RmmEvidence.objects.get(related_id=job.pk, evidence_type="configuration_audit").pk)
    assert row == {
        "id": row["id"],
        "asset": str(w.agent.asset_id),
        "hostname": "web-01",
        "profile": str(profile.pk),
        "profile_name": "baseline",
        "profile_revision": 1,
        "item": str(second.pk),
        "config_key": "test.echo",
        "parameters": {"value": "p"},
        "comparison": "equals",
        "desired_value": "value-1",
        "enforcement_mode": "audit",
        "observed_value": "drifted",
        "compliant": False,
        "state": "non_compliant",
        "reason": "equals 'value-1'",
        "exit_code": 0,
        "observed_at": row["observed_at"],
        "audit_job": str(job.pk),
        "enforcement_job": None,
        "evidence": evidence_id,
    }
    assert w.tech.get(f"{url}{row['id']}/").json() == row

    def items(**params) -> list[str]:
        return sorted(r["item"] for r in w.tech.get(url, params).json()["results"])

    assert items(asset=str(w.agent.asset_id)) == sorted([str(first.pk), str(second.pk)])
    assert items(profile=str(other.pk)) == [str(items_of(other)[0].pk)]
    assert items(compliant="true") == [str(first.pk)] and items(compliant="false") == [str(second.pk)]
    assert items(state="error") == [str(items_of(other)[0].pk)]  # neither compliant nor not
    assert len(items(config_key="test.echo")) == 3 and items(config_key="test.number") == []
    page = w.tech.get(url, {"limit": 1}).json()
    assert page["count"] == 3 and len(page["results"]) == 1 and page["next"]
    # one site's technician: its site's readings alone; another site's reading is not found
    alpha_only = caller("alpha-tech", "technician", sites=[w.site])
    assert alpha_only.get(url).json()["count"] == 2
    beta_row = ConfigurationObservation.objects.get(asset=beta_agent.asset)
    assert alpha_only.get(f"{url}{beta_row.pk}/").status_code == 404
    assert alpha_only.get(url, {"asset": str(beta_agent.asset_id)}).json()["count"] == 0
    # bad filters: 400 naming them
    for params in ({"compliant": "maybe"}, {"asset": "nope"}, {"state": "fine"}, {"profile": "1"}):
        r = w.tech.get(url, params)
        assert r.status_code == 400 and list(r.json()) == list(params), r.content


def test_another_sites_assignment_asset_drift_and_audit_job_answer_404(w, caller):
    outsider = caller("outsider", "technician", sites=[w.other_site])
    profile = profile_of(w, 1)
    [item] = items_of(profile)
    assignment = assign(w, profile, asset=w.agent.asset)
    job = audit(w, assignment, {item: (0, b"other\n")})
    [drift] = ConfigurationDriftEvent.objects.all()
    for path, method in (
        (f"/api/v1/profile-assignments/{assignment.pk}/audit/", "post"),
        (f"/api/v1/assets/{w.agent.asset_id}/compliance/", "get"),
        (f"/api/v1/drift-events/{drift.pk}/", "get"),
        (f"/api/v1/audit-jobs/{job.pk}/", "get"),
    ):
        assert getattr(outsider, method)(path).status_code == 404, path
    assert outsider.get("/api/v1/drift-events/").json()["count"] == 0
    assert ConfigurationAuditJob.objects.count() == 1
    assert HistoryEvent.objects.filter(action="refused.access").count() == 4


def test_a_late_result_of_an_older_audit_never_overwrites_a_newer_reading(w):
    profile = profile_of(w, 1)
    [item] = items_of(profile)
    assignment = assign(w, profile, asset=w.agent.asset)
    [older] = audits.request_audit(w.psa.user, assignment.pk)
    [lost] = engine.lease(w.agent, 4, timezone.now())
    engine.sweep(lost.lease_expires_at + timedelta(seconds=1))  # its agent went quiet: lost
    newer = audit(w, assignment, {item: (0, b"value-0\n")})
    late = make_result(str(lost.pk), "completed", exit_code=0, stdout=document({item: (0, b"stale\n")}))
    assert engine.ingest_result(w.agent, late)[1]["status"] == "accepted_late"
    row = ConfigurationObservation.objects.get()
    assert (row.state, row.observed_value, row.audit_job_id) == ("compliant", "value-0", newer.pk)
    assert row.evidence_id == RmmEvidence.objects.get(related_id=newer.pk, evidence_type="configuration_audit").pk
    assert not ConfigurationDriftEvent.objects.exists()
    # the late result is kept as evidence of its own, with its verdict
    [kept] = RmmEvidence.objects.filter(related_id=older.pk, evidence_type="configuration_audit").order_by(
        "captured_at"
    )[1:]
    assert json.loads(read_blob(kept))["observations"][0]["observed_value"] == "stale"


def test_a_kill_switch_stops_a_new_audit_and_the_refusal_is_recorded(w):
    assignment = assign(w, profile_of(w), asset=w.agent.asset)
    kill_switches.engage(w.boss.user, scope="asset", target=str(w.agent.asset_id), reason="incident")
    r = w.psa.post(f"/api/v1/profile-assignments/{assignment.pk}/audit/")
    assert r.status_code == 403 and "kill switch" in r.json()["detail"]
    refusal = HistoryEvent.objects.get(action="refused.profile_audit_job.create")
    assert refusal.payload["reason"].startswith("kill switch engaged")
    assert not ConfigurationAuditJob.objects.exists()
