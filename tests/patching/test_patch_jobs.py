"""Patch jobs (issue 16, parts 3 and 4): one request over the assets' missing patches, an engine
batch of one job per asset, decided whole by a second person, held until scheduled_for; each job
installs the exact versions, reboots as its policy and the endpoint say, and scans again; only
that scan marks a patch installed, or failed."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from evidence.models import RmmEvidence
from evidence.services import read_blob
from patching import kind, scans
from patching.models import AssetPatch, PatchCatalog, PatchInstallJob, PatchJob
from rmm.engine import services as engine
from rmm.engine.models import Batch
from rmm.history.models import HistoryEvent
from rmm.inventory.models import Agent, Asset
from tests.helpers import make_agent
from tests.patching.scanning import dpkg_document, recorded_wua, run, scan

ZZ = {"zz-rmm-tool": "1.0-1", "zz-rmm-lib": "2.0-1"}
UPGRADES = {"zz-rmm-tool": "1.0-2", "zz-rmm-lib": "2.1-1"}


@pytest.fixture
def scanned(world):
    """The asset's scan reported two packages with updates available: two missing patches."""
    scan(world, dpkg_document(ZZ, UPGRADES))
    return world


def entry(product: str) -> PatchCatalog:
    return PatchCatalog.objects.get(vendor="debian", product=product, patch_id=UPGRADES[product])


def request(world, **extra):
    body = {
        "assets": [str(world["agent"].asset_id)],
        "psa_task_id": str(world["task"].pk),
        "patches": [str(entry("zz-rmm-tool").pk)],
        "reboot_policy": "never",
        **extra,
    }
    return world["psa"].post("/api/v1/patch-jobs/", body, format="json")


def state(world, product: str) -> str:
    return AssetPatch.objects.get(asset_id=world["agent"].asset_id, patch=entry(product)).status


def test_a_patch_job_is_a_batch_of_per_asset_jobs_awaiting_a_second_person(scanned):
    r = request(scanned, plan={"canary": 1, "failure_threshold_percent": 0})
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["status"] == "awaiting_approval" and body["psa_case_id"] == str(scanned["task"].case_id)
    assert Batch.objects.get(pk=body["batch"]).status == "awaiting_approval"
    [ref] = body["jobs"]
    assert ref["status"] == "awaiting_approval" and ref["packages"] == [["zz-rmm-tool", "1.0-2"]]
    job = PatchInstallJob.objects.get(pk=ref["id"])
    install, rescan = kind.render_patch(job)
    assert install.privileged and not rescan.privileged and install.reboot == ""
    assert "apt-get install" in install.content and "zz-rmm-tool=1.0-2\n" in install.content
    assert '[["zz-rmm-tool","1.0-2"]]' in rescan.content and "dpkg-query" in rescan.content
    detail = scanned["psa"].get(f"/api/v1/patch-jobs/{body['id']}/").json()
    assert detail["status"] == "awaiting_approval" and detail["progress"] == {"awaiting_approval": 1}
    assert detail["jobs"][0]["hostname"] == "patch-1" and detail["reboot_policy"] == "never"
    assert HistoryEvent.objects.filter(action="patch_job.created", subject_id=body["id"]).exists()


@pytest.mark.parametrize(
    ("policy", "reboot"), [("never", ""), ("if_required", "if_pending"), ("always", "now")], ids=str
)
def test_the_reboot_policy_decides_the_install_steps_reboot(scanned, policy, reboot):
    r = request(scanned, reboot_policy=policy)
    assert r.status_code == 201, r.content
    [install, _] = kind.render_patch(PatchInstallJob.objects.get(pk=r.json()["jobs"][0]["id"]))
    # if_required: the endpoint reboots only if it says one is pending (/var/run/reboot-required)
    assert install.reboot == reboot


def test_a_reboot_policy_needs_agents_that_can_reboot(scanned):
    Agent.objects.filter(pk=scanned["agent"].pk).update(capabilities="structured_result")
    r = request(scanned, reboot_policy="always")
    assert r.status_code == 400 and "reboot" in r.json()["reboot_policy"][0]
    assert request(scanned, reboot_policy="never").status_code == 201


@pytest.mark.parametrize(
    ("extra", "field", "message"),
    [
        ({"reboot_policy": "sometimes"}, "reboot_policy", "Must be one of"),
        ({"scheduled_for": "2020-01-01T00:00:00Z"}, "scheduled_for", "In the past"),
        ({"scheduled_for": "2999-01-01T00:00:00Z"}, "scheduled_for", "ahead"),
        ({"patches": None, "min_severity": "dreadful"}, "min_severity", "Must be one of"),
        ({"min_severity": "high"}, "patches", "either"),
        ({"patches": ["00000000-0000-0000-0000-000000000000"]}, "patches", "not in the catalog"),
    ],
    ids=["reboot_policy", "past", "too_far", "severity", "both", "unknown_patch"],
)
def test_bad_requests_are_refused_with_the_field_and_change_nothing(scanned, extra, field, message):
    body = {key: value for key, value in extra.items() if value is not None}
    if "patches" in extra and extra["patches"] is None:
        r = scanned["psa"].post(
            "/api/v1/patch-jobs/",
            {"assets": [str(scanned["agent"].asset_id)], "psa_task_id": str(scanned["task"].pk), **body},
            format="json",
        )
    else:
        r = request(scanned, **body)
    assert r.status_code == 400, r.content
    assert message in json.dumps(r.json()[field])
    assert not PatchJob.objects.exists() and not PatchInstallJob.objects.exists()


def test_no_authority_is_refused_recorded_and_leaves_no_request(scanned):
    r = request(scanned, psa_task_id=None)
    assert r.status_code == 400 and "psa_task_id" in r.json()
    assert HistoryEvent.objects.filter(action="refused.patch_job.create").exists()
    assert not PatchJob.objects.exists()


def test_an_asset_that_misses_none_of_the_patches_is_refused(scanned, site):
    other, _ = make_agent(site, "clean")
    r = request(scanned, assets=[str(scanned["agent"].asset_id), str(other.asset_id)])
    assert r.status_code == 400 and "miss none" in r.json()["assets"][0]


def test_min_severity_targets_every_missing_patch_of_that_severity_or_higher(scanned):
    PatchCatalog.objects.filter(pk=entry("zz-rmm-lib").pk).update(severity=3)
    body = {"site": scanned["site"].name, "psa_task_id": str(scanned["task"].pk), "min_severity": "high"}
    r = scanned["psa"].post("/api/v1/patch-jobs/", {**body, "reboot_policy": "never"}, format="json")
    assert r.status_code == 201, r.content
    assert r.json()["jobs"][0]["packages"] == [["zz-rmm-lib", "2.1-1"]]
    assert scanned["psa"].get(f"/api/v1/patch-jobs/{r.json()['id']}/").json()["min_severity"] == "high"


def approve(world, request_id, who="boss"):
    return world[who].post(f"/api/v1/patch-jobs/{request_id}/approve/", {}, format="json")


def test_the_requester_never_approves_and_an_approver_needs_the_privileged_permission(scanned, caller):
    made = request(scanned).json()
    r = approve(scanned, made["id"], who="psa")
    assert r.status_code == 403
    plain = caller("plain-approver", "approver")
    r = plain.post(f"/api/v1/patch-jobs/{made['id']}/approve/", {}, format="json")
    assert r.status_code == 403 and "privileged" in r.json()["detail"]
    assert HistoryEvent.objects.filter(action="refused.patch_job.approve").count() == 2
    assert PatchJob.objects.get(pk=made["id"]).status == "awaiting_approval"


def test_installed_only_when_the_rescan_reports_it_never_because_the_install_exited_0(scanned):
    made = request(scanned).json()
    r = approve(scanned, made["id"])
    assert r.status_code == 200, r.content
    assert r.json()["status"] == "running"  # its batch's
    assert approve(scanned, made["id"]).status_code == 409  # decided whole, once
    assert state(scanned, "zz-rmm-tool") == "installing" and state(scanned, "zz-rmm-lib") == "missing"
    install = run(scanned, None)  # the install exits 0
    assert install.privileged and state(scanned, "zz-rmm-tool") == "installing"
    wanted = [("zz-rmm-tool", "1.0-2")]
    run(scanned, dpkg_document({**ZZ, "zz-rmm-tool": "1.0-2"}, {"zz-rmm-lib": "2.1-1"}, wanted))
    job = PatchInstallJob.objects.get(pk=made["jobs"][0]["id"])
    assert job.status == "succeeded"
    assert state(scanned, "zz-rmm-tool") == "installed" and state(scanned, "zz-rmm-lib") == "missing"
    old = PatchCatalog.objects.get(vendor="debian", product="zz-rmm-tool", patch_id="1.0-1")
    assert AssetPatch.objects.get(asset_id=scanned["agent"].asset_id, patch=old).status == "superseded"
    documents = [json.loads(read_blob(e)) for e in RmmEvidence.objects.filter(related_id=job.pk)]
    assert {d["evidence_type"] for d in documents} == {"patch_result"}
    assert sorted(d["step"] for d in documents) == ["install", "rescan"]
    assert all(d["patch_job"]["approved_by"] == "boss" for d in documents)
    detail = scanned["psa"].get(f"/api/v1/patch-jobs/{made['id']}/").json()
    assert detail["status"] == "completed" and detail["progress"] == {"succeeded": 1}


def test_a_rescan_that_does_not_report_the_version_fails_the_job_and_the_patch(scanned):
    made = request(scanned).json()
    approve(scanned, made["id"])
    run(scanned, None, exit_code=100)  # apt-get failed: the re-scan runs all the same
    # the post-install script failed: dpkg has the package unconfigured, apt offers nothing
    document = dpkg_document({"zz-rmm-lib": "2.0-1"}, {"zz-rmm-lib": "2.1-1"}, [("zz-rmm-tool", "1.0-2")])
    document["installed"].append("zz-rmm-tool 1.0-2 half-configured")
    run(scanned, document)
    job = PatchInstallJob.objects.get(pk=made["jobs"][0]["id"])
    assert job.status == "failed" and job.status_reason == "step 1 of 2 failed"
    rescan = engine.job_instructions(job).get(step=1)
    assert rescan.reason == "not installed after the install: zz-rmm-tool=1.0-2"
    assert state(scanned, "zz-rmm-tool") == "failed"
    # a later scan that reports the same leaves it failed, not forgotten
    scan(scanned, dpkg_document({"zz-rmm-lib": "2.0-1"}, {"zz-rmm-lib": "2.1-1"}))
    assert state(scanned, "zz-rmm-tool") == "failed"


def test_a_job_scheduled_later_is_held_until_its_time(scanned, django_capture_on_commit_callbacks):
    later = timezone.now() + timedelta(hours=2)
    made = request(scanned, scheduled_for=later.isoformat()).json()
    with django_capture_on_commit_callbacks(execute=True):
        r = approve(scanned, made["id"])
    assert r.json()["status"] == "scheduled"
    from django_q.models import Schedule

    [schedule] = Schedule.objects.filter(func="patching.tasks.release_patch_job")
    assert abs((schedule.next_run - later).total_seconds()) < 1
    assert PatchInstallJob.objects.get().status == "awaiting_approval" and state(scanned, "zz-rmm-tool") == "missing"
    from patching import jobs

    assert jobs.release_due(made["id"], now=later - timedelta(seconds=1)) == 0  # not before its time
    assert jobs.release_due(made["id"], now=later) == 1
    assert PatchInstallJob.objects.get().status == "queued" and state(scanned, "zz-rmm-tool") == "installing"
    assert jobs.release_due(made["id"], now=later) == 0  # released once


def test_a_rejection_decides_the_whole_request(scanned):
    made = request(scanned).json()
    r = scanned["boss"].post(f"/api/v1/patch-jobs/{made['id']}/reject/", {"reason": ""}, format="json")
    assert r.status_code == 400 and "reason" in r.json()
    r = scanned["boss"].post(f"/api/v1/patch-jobs/{made['id']}/reject/", {"reason": "not this week"}, format="json")
    assert r.status_code == 200 and r.json()["status"] == "rejected"
    assert PatchInstallJob.objects.get().status == "rejected"
    assert approve(scanned, made["id"]).status_code == 409


def test_a_kill_switch_at_release_leaves_the_jobs_unqueued_and_says_why(scanned):
    from rmm.engine.services import kill_switches

    made = request(scanned).json()
    kill_switches.engage(scanned["boss"].user, scope="global", target=None, reason="incident")
    approve(scanned, made["id"])
    assert PatchInstallJob.objects.get().status == "awaiting_approval"
    assert "kill switch" in PatchJob.objects.get().status_reason
    assert state(scanned, "zz-rmm-tool") == "missing"


def test_another_sites_caller_cannot_see_or_decide_a_patch_job(scanned, caller, other_site):
    made = request(scanned).json()
    stranger = caller("stranger", "approver", sites=[other_site])
    assert stranger.get(f"/api/v1/patch-jobs/{made['id']}/").status_code == 404
    assert stranger.post(f"/api/v1/patch-jobs/{made['id']}/approve/", {}, format="json").status_code == 404


CUMULATIVE = "2024-05 Cumulative Update for Windows 11 Version 23H2 for x64-based Systems (KB5037771)"


def wua_after_install() -> dict:
    """The recorded Windows scan once KB5037771 is installed, as the job's re-scan reports it."""
    document = recorded_wua()
    for update in document["updates"]:
        update["installed"] = update["installed"] or update["kb"] == "KB5037771"
    return {**document, "wanted": [[CUMULATIVE, "KB5037771"]]}


def windows_request(world, **extra):
    """A Windows asset's scan reported KB5037771 missing: a patch job for it."""
    Asset.objects.filter(pk=world["agent"].asset_id).update(os="Windows 11 Pro")
    scan(world, recorded_wua())
    update = PatchCatalog.objects.get(vendor="windows", patch_id="KB5037771")
    body = {"assets": [str(world["agent"].asset_id)], "psa_task_id": str(world["task"].pk), **extra}
    return world["psa"].post("/api/v1/patch-jobs/", {**body, "patches": [str(update.pk)]}, format="json"), update


def test_a_windows_update_is_installed_through_the_update_agent_and_rescanned(world):
    r, update = windows_request(world, reboot_policy="if_required")
    assert r.status_code == 201, r.content
    job = PatchInstallJob.objects.get(pk=r.json()["jobs"][0]["id"])
    assert job.family == "wua" and job.packages == [[CUMULATIVE, "KB5037771"]]
    install, rescan = kind.render_patch(job)
    assert (install.interpreter, install.privileged, install.reboot) == ("powershell", True, "if_pending")
    script = install.content
    assert "$wanted = @('KB5037771')" in script and "CreateUpdateInstaller()" in script and "AcceptEula()" in script
    # the endpoint's pending-reboot keys, reported in the install's document (the agent reads them too)
    assert "'HKLM:\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\WindowsUpdate\\Auto Update\\RebootRequired'" in script
    assert "Component Based Servicing\\RebootPending'" in script and "PendingFileRenameOperations" in script
    assert rescan.interpreter == "powershell" and not rescan.privileged
    approve(world, r.json()["id"])
    assert run(world, {"format": "rmm-patch-install/1", "results": [{"result_code": 2}]}).step == 0
    run(world, wua_after_install())
    job.refresh_from_db()
    assert job.status == "succeeded"
    row = AssetPatch.objects.get(asset_id=world["agent"].asset_id, patch=update)
    assert row.status == "installed" and row.installed_at is not None


def test_a_windows_update_the_rescan_does_not_report_installed_fails(world):
    r, update = windows_request(world, reboot_policy="never")
    approve(world, r.json()["id"])
    run(world, None, exit_code=1)  # not offered, or the Update Agent's result code 4
    run(world, {**recorded_wua(), "wanted": [[CUMULATIVE, "KB5037771"]]})
    assert PatchInstallJob.objects.get().status == "failed"
    assert AssetPatch.objects.get(asset_id=world["agent"].asset_id, patch=update).status == "failed"


def test_the_windows_rescan_carries_any_title_as_it_was_signed():
    wanted = [('Update for Microsoft\'s "Défender" (KB1)', "KB1")]
    script = scans.render_windows(wanted)
    quoted = script.split("',\"wanted\":' + ", 1)[1].split(" + '}'", 1)[0]
    assert quoted.startswith("'") and quoted.endswith("'") and "''" in quoted
    assert json.loads(quoted[1:-1].replace("''", "'")) == [list(pair) for pair in wanted]
