"""Deployment jobs (seed E deployment_jobs): an approved package installed on assets in a batch,
under a PSA task; the agent fetches the installer by its hash; the detection read, judged on the
server, decides whether the job succeeded."""

from __future__ import annotations

import io
import json
import os
import subprocess

import pytest
from django.test import Client
from django.utils import timezone

from deployment import kind
from deployment import services as deployment
from deployment.models import DeploymentJob, SoftwarePackage
from evidence.models import RmmEvidence
from evidence.services import read_blob
from rmm.artefacts import services as artefacts
from rmm.engine import services as engine
from rmm.history.models import HistoryEvent
from rmm.inventory.models import Agent
from rmm_agent.protocol import artefact_env_name
from rmm_agent.results import make_result
from tests.helpers import approved_authority, make_agent
from tests.support.profiles import grant_privileged_approval


@pytest.fixture
def world(caller, site):
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    grant_privileged_approval(boss.user)
    agent, _ = make_agent(site, "deploy-1")
    Agent.objects.filter(pk=agent.pk).update(capabilities="artefacts,structured_result", protocol=2)
    agent.refresh_from_db()
    return {"psa": psa, "tech": tech, "boss": boss, "agent": agent, "task": approved_authority(site, psa.user)}


def package(world, *, approve=True, **fields) -> SoftwarePackage:
    given = {
        "name": "hello-rmm",
        "version": "1.0-1",
        "installer_type": "deb",
        "silent_args": "--force-confold",
        "detection": {"type": "package", "name": "hello-rmm", "version": "1.0-1"},
        "uninstall_args": "",
        **fields,
    }
    made = deployment.register_upload(world["tech"].user, upload=io.BytesIO(b"a deb's bytes"), **given)
    return artefacts.decide(made, world["boss"].user, approve=True) if approve else made


def deploy(world, pkg, **extra):
    body = {"package": str(pkg.pk), "assets": [str(world["agent"].asset_id)], "psa_task_id": str(world["task"].pk)}
    return world["psa"].post("/api/v1/deployments/", {**body, **extra}, format="json")


def run(world, structured: dict | None, *, exit_code: int = 0):
    """The agent's side, in process: lease the next step and report it."""
    [inst] = engine.lease(world["agent"], 4, timezone.now())
    body = make_result(str(inst.pk), "completed", exit_code=exit_code, stdout="ok\n", structured=structured)
    assert engine.ingest_result(world["agent"], body)[0] == 201
    return inst


def test_a_deployment_is_a_batch_of_jobs_under_the_task_whose_steps_fetch_install_and_detect(world):
    pkg = package(world)
    r = deploy(world, pkg, plan={"canary": 1, "failure_threshold_percent": 0})
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["count"] == 1 and body["psa_case_id"] == str(world["task"].case_id) and body["batch"]
    job = DeploymentJob.objects.get(pk=body["jobs"][0]["id"])
    install, detect = kind.render(job)
    # The install runs as root on the fetched, hash-checked file; the detection read does not.
    assert install.privileged and not detect.privileged
    assert install.artefacts[0].sha256 == pkg.hash and install.artefacts[0].name == "hello-rmm_1.0-1.deb"
    assert "dpkg -i --force-confold" in install.content and "$RMM_ARTEFACT_" in install.content
    assert "dpkg-query" in detect.content and '"wanted": "1.0-1"' in detect.content

    detail = world["psa"].get(f"/api/v1/deployment-jobs/{job.pk}/").json()
    assert detail["status"] in ("queued", "running") and detail["package"] == str(pkg.pk)
    assert detail["psa_case_id"] == str(world["task"].case_id) and detail["batch"] == body["batch"]


def test_the_detection_read_decides_success_never_the_installers_exit_code(world):
    pkg = package(world)
    r = deploy(world, pkg)
    job = DeploymentJob.objects.get(pk=r.json()["jobs"][0]["id"])
    run(world, None)  # the install exits 0
    run(world, {"installed": False, "version": "", "wanted": "1.0-1"})
    job.refresh_from_db()
    assert job.status == "failed" and job.status_reason == "step 2 of 2 failed: detection: not installed"
    documents = [
        json.loads(read_blob(e)) for e in RmmEvidence.objects.filter(related_id=job.pk).order_by("history_sequence")
    ]
    assert [d["step"] for d in documents] == ["install", "detection"]
    assert {d["evidence_type"] for d in documents} == {"deployment_result"}
    assert documents[1]["result"]["structured"]["installed"] is False
    detail = world["psa"].get(f"/api/v1/deployment-jobs/{job.pk}/").json()
    assert [s["step"] for s in detail["steps"]] == [0, 1] and detail["executed_at"]
    assert len(detail["evidence"]) == 2


@pytest.mark.parametrize(
    ("structured", "status", "reason"),
    [
        ({"installed": True, "version": "1.0-1", "wanted": "1.0-1"}, "succeeded", ""),
        ({"installed": True, "version": "0.9-3", "wanted": "1.0-1"}, "failed", "detection: version '0.9-3'"),
    ],
)
def test_an_installed_package_of_the_wanted_version_succeeds_another_version_fails(world, structured, status, reason):
    job = DeploymentJob.objects.get(pk=deploy(world, package(world)).json()["jobs"][0]["id"])
    run(world, None)
    run(world, structured)
    job.refresh_from_db()
    assert job.status == status and reason in job.status_reason


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"detection": {"type": "registry", "key": "HKLM\\\\Software\\\\X"}}, "registry"),
        (
            {"installer_type": "script", "interpreter": "sh", "detection": {"type": "registry", "key": "HKLM\\\\X"}},
            "registry",
        ),
    ],
)
def test_a_package_this_server_cannot_deploy_on_linux_is_refused(world, fields, message):
    r = deploy(world, package(world, **fields))
    assert r.status_code == 400 and message in r.json()["package"][0]
    assert not DeploymentJob.objects.exists()


def test_a_pending_package_no_authority_and_an_asset_elsewhere_are_refused_and_recorded(world, caller, other_site):
    pending = package(world, approve=False)
    r = deploy(world, pending)
    assert r.status_code == 400 and "not approved" in r.json()["package"][0]
    approved = package(world, version="1.0-2", detection={})
    r = deploy(world, approved, psa_task_id=None)
    assert r.status_code == 400 and "psa_task_id" in r.json()
    assert HistoryEvent.objects.filter(action__startswith="refused.").exists()
    stranger = caller("stranger", "psa", sites=[other_site])
    r = stranger.post(
        "/api/v1/deployments/",
        {"package": str(approved.pk), "assets": [str(world["agent"].asset_id)], "psa_task_id": str(world["task"].pk)},
        format="json",
    )
    # An asset outside the caller's sites is one that does not exist: 404, recorded.
    assert r.status_code == 404 and r.json() == {"assets": ["1 of the assets do not exist."]}
    refusal = HistoryEvent.objects.filter(action="refused.deployment.create").latest("sequence")
    assert "outside your sites" in refusal.payload["reason"]
    assert not DeploymentJob.objects.exists()


def sh(script: str, tmp_path) -> dict:
    """Run a rendered detection step as the agent would: sh, with RMM_RESULT_PATH."""
    out = tmp_path / "result.json"
    subprocess.run(["sh", "-c", script], check=True, env={**os.environ, "RMM_RESULT_PATH": str(out)})
    return json.loads(out.read_text())


@pytest.mark.skipif(not os.path.exists("/usr/bin/dpkg-query"), reason="needs Debian's dpkg-query")
def test_the_detection_step_reads_the_real_package_database(world, tmp_path):
    dpkg_version = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "dpkg"], capture_output=True, text=True, check=True
    ).stdout
    present = package(world, name="dpkg", version="1", detection={"type": "package", "name": "dpkg"})
    assert sh(kind.render_detection(present), tmp_path) == {
        "installed": True,
        "version": dpkg_version,
        "wanted": "",
        "expect": "installed",
    }
    absent = package(world, name="no-such-pkg", version="1", detection={"type": "package", "name": "rmm-no-such-pkg"})
    assert sh(kind.render_detection(absent, expect="absent"), tmp_path) == {
        "installed": False,
        "version": "",
        "wanted": "",
        "expect": "absent",
    }
    marker = tmp_path / "marker"
    by_file = package(world, name="by-file", version="1", detection={"type": "file", "path": str(marker)})
    assert sh(kind.render_detection(by_file), tmp_path)["installed"] is False
    marker.write_text("x")
    assert sh(kind.render_detection(by_file), tmp_path)["installed"] is True


@pytest.mark.parametrize(
    ("installed", "status", "reason"), [(False, "succeeded", ""), (True, "failed", "detection: still installed")]
)
def test_an_uninstall_is_its_own_job_proven_by_a_read_that_finds_the_package_gone(world, installed, status, reason):
    pkg = package(world)
    r = deploy(world, pkg, action="uninstall")
    assert r.status_code == 201, r.content
    job = DeploymentJob.objects.get(pk=r.json()["jobs"][0]["id"])
    remove, detect = kind.render(job)
    assert remove.privileged and not remove.artefacts and "dpkg -r" in remove.content and "hello-rmm" in remove.content
    assert '"expect": "absent"' in detect.content
    run(world, None)
    run(world, {"installed": installed, "version": "1.0-1" if installed else "", "wanted": "", "expect": "absent"})
    job.refresh_from_db()
    assert job.action == "uninstall" and job.status == status and reason in job.status_reason
    assert world["psa"].get(f"/api/v1/deployment-jobs/{job.pk}/").json()["action"] == "uninstall"


def test_an_uninstall_needs_a_rule_that_names_the_package_and_a_known_action(world):
    r = deploy(world, package(world, detection={"type": "file", "path": "/opt/x"}), action="uninstall")
    assert r.status_code == 400 and "detection rule" in r.json()["action"][0]
    r = deploy(world, package(world, version="2"), action="reinstall")
    assert r.status_code == 400 and "action" in r.json()
    assert not DeploymentJob.objects.exists()


def windows_job(world, **fields) -> DeploymentJob:
    given = {"installer_type": "msi", "detection": {"type": "package", "name": "Hello RMM", "version": "1.0.1"}}
    r = deploy(world, package(world, **{**given, **fields}))
    assert r.status_code == 201, r.content
    return DeploymentJob.objects.get(pk=r.json()["jobs"][0]["id"])


def test_an_msi_installs_with_msiexec_quietly_and_is_read_from_windows_uninstall_entries(world):
    job = windows_job(world, silent_args="ALLUSERS=1 INSTALLDIR='C:\\Hello'")
    install, detect = kind.render(job)
    assert (install.interpreter, detect.interpreter) == ("powershell", "powershell")
    assert install.privileged and install.artefacts[0].sha256 == job.package.hash
    assert "Start-Process -FilePath 'msiexec.exe'" in install.content
    assert "@('/i', ('\"' + $env:RMM_ARTEFACT_HELLO_RMM_1_0_1_MSI + '\"'), '/qn', '/norestart')" in install.content
    # The approved arguments stay one PowerShell literal: a quote in them is doubled, nothing expands.
    assert "+ 'ALLUSERS=1 INSTALLDIR=''C:\\Hello'''" in install.content
    assert "if ($p.ExitCode -eq 3010)" in install.content and "exit $p.ExitCode" in install.content
    assert "Where-Object { $_.DisplayName -eq 'Hello RMM' }" in detect.content
    assert "wanted = '1.0.1'; expect = 'installed'" in detect.content
    assert "WriteAllText($env:RMM_RESULT_PATH" in detect.content and "Set-Content" not in detect.content


def test_an_exe_runs_itself_and_a_registry_rule_reads_one_value(world):
    rule = {"type": "registry", "key": "HKLM:\\SOFTWARE\\Hello's", "value": "Version", "data": "1.0.1"}
    job = windows_job(world, installer_type="exe", silent_args="/S", detection=rule)
    install, detect = kind.render(job)
    assert "Start-Process -FilePath $env:RMM_ARTEFACT_HELLO_RMM_1_0_1_EXE -ArgumentList '/S' -Wait" in install.content
    assert "Get-ItemProperty -LiteralPath 'HKLM:\\SOFTWARE\\Hello''s'" in detect.content
    assert "$item.'Version'" in detect.content and "$version -ne '1.0.1'" in detect.content


# What Windows PowerShell's ConvertTo-Json -Compress writes for the detection document.
RECORDED = {
    "installed": '{"installed":true,"version":"1.0.1","wanted":"1.0.1","expect":"installed"}',
    "older": '{"installed":true,"version":"0.9.7","wanted":"1.0.1","expect":"installed"}',
    "missing": '{"installed":false,"version":"","wanted":"1.0.1","expect":"installed"}',
}


@pytest.mark.parametrize(
    ("recorded", "status", "reason"),
    [("installed", "succeeded", ""), ("older", "failed", "version '0.9.7'"), ("missing", "failed", "not installed")],
)
def test_a_windows_detection_document_is_judged_like_a_linux_one(world, recorded, status, reason):
    job = windows_job(world)
    run(world, None)
    run(world, json.loads(RECORDED[recorded]))
    job.refresh_from_db()
    assert job.status == status and reason in job.status_reason


def test_an_msi_uninstalls_with_msiexec_x_on_the_fetched_file_and_must_read_absent(world):
    pkg = package(world, installer_type="msi", uninstall_args="KEEPDATA=1", detection={"type": "package", "name": "X"})
    r = deploy(world, pkg, action="uninstall")
    assert r.status_code == 201, r.content
    remove, detect = kind.render(DeploymentJob.objects.get(pk=r.json()["jobs"][0]["id"]))
    assert remove.privileged and remove.artefacts[0].sha256 == pkg.hash
    assert "@('/x', ('\"' + $env:RMM_ARTEFACT_HELLO_RMM_1_0_1_MSI + '\"'), '/qn', '/norestart') + 'KEEPDATA=1'" in (
        remove.content
    )
    assert "removed; Windows asks for a reboot" in remove.content
    assert "wanted = ''; expect = 'absent'" in detect.content


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"installer_type": "exe", "uninstall_args": "/uninstall /S"}, "-ArgumentList '/uninstall /S' -Wait"),
        (
            {"installer_type": "script", "interpreter": "powershell", "uninstall_args": "-Remove"},
            "'-ExecutionPolicy', 'Bypass', '-File', ('\"' + $env:RMM_ARTEFACT_HELLO_RMM_1_0_1_PS1 + '\"')) + '-Remove'",
        ),
    ],
    ids=["exe", "powershell-script"],
)
def test_an_exe_or_a_powershell_script_uninstalls_by_running_itself_with_its_uninstall_args(world, fields, expected):
    pkg = package(world, detection={"type": "file", "path": "C:\\Hello\\hello.exe"}, **fields)
    r = deploy(world, pkg, action="uninstall")
    assert r.status_code == 201, r.content
    remove, detect = kind.render(DeploymentJob.objects.get(pk=r.json()["jobs"][0]["id"]))
    assert remove.interpreter == "powershell" and remove.artefacts[0].sha256 == pkg.hash
    assert expected in remove.content and "expect = 'absent'" in detect.content


@pytest.mark.parametrize(
    "fields",
    [{"installer_type": "exe"}, {"installer_type": "script", "interpreter": "sh"}],
    ids=["exe", "script"],
)
def test_an_uninstall_that_would_run_the_installer_again_is_refused(world, fields):
    r = deploy(world, package(world, detection={}, **fields), action="uninstall")
    assert r.status_code == 400 and "uninstall_args" in r.json()["action"][0]
    assert not DeploymentJob.objects.exists()


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"installer_type": "script"}, "interpreter"),
        ({"installer_type": "script", "interpreter": "bash"}, "interpreter"),
        ({"installer_type": "deb", "interpreter": "sh"}, "interpreter"),
    ],
    ids=["script-without", "unknown", "deb-with"],
)
def test_only_a_script_package_names_its_interpreter(world, fields, field):
    r = world["tech"].post(
        "/api/v1/packages/",
        {"name": "s", "version": "1", "file": io.BytesIO(b"echo hi\n"), **fields},
        format="multipart",
    )
    assert r.status_code == 400 and field in r.json(), r.content
    assert not SoftwarePackage.objects.exists()


def test_a_sh_script_package_runs_the_fetched_file_with_its_arguments_and_the_read_decides(world, tmp_path):
    """The rendered steps, run by sh as the agent runs them: the file named by its artefact's
    variable, installed with the silent arguments, removed with the uninstall arguments."""
    marker = tmp_path / "installed"
    pkg = package(
        world,
        installer_type="script",
        interpreter="sh",
        silent_args="install",
        uninstall_args="remove",
        detection={"type": "file", "path": str(marker)},
    )
    assert pkg.filename == "hello-rmm_1.0-1.sh"
    script = tmp_path / pkg.filename
    script.write_text(f'if [ "$1" = install ]; then touch {marker}; else rm -f {marker}; fi\n')
    env = {**os.environ, artefact_env_name(pkg.filename): str(script), "RMM_RESULT_PATH": str(tmp_path / "r.json")}

    def steps(action):
        r = deploy(world, pkg, action=action)
        assert r.status_code == 201, r.content
        return kind.render(DeploymentJob.objects.get(pk=r.json()["jobs"][0]["id"]))

    install, detect = steps("install")
    assert install.privileged and install.artefacts[0].sha256 == pkg.hash and install.interpreter == "sh"
    subprocess.run(["sh", "-c", install.content], check=True, env=env)
    subprocess.run(["sh", "-c", detect.content], check=True, env=env)
    assert json.loads((tmp_path / "r.json").read_text())["installed"] is True

    remove, detect = steps("uninstall")
    assert remove.artefacts[0].sha256 == pkg.hash and "remove" in remove.content
    subprocess.run(["sh", "-c", remove.content], check=True, env=env)
    subprocess.run(["sh", "-c", detect.content], check=True, env=env)
    assert json.loads((tmp_path / "r.json").read_text()) == {
        "installed": False,
        "version": "",
        "wanted": "",
        "expect": "absent",
    }


def test_each_detection_read_becomes_the_assets_installed_software_with_its_evidence(world, caller, other_site):
    pkg = package(world)
    url = f"/api/v1/assets/{world['agent'].asset_id}/software/"
    job = DeploymentJob.objects.get(pk=deploy(world, pkg).json()["jobs"][0]["id"])
    run(world, None)  # the install exits 0: that says nothing of what is installed
    assert world["psa"].get(url).json()["results"] == []
    run(world, {"installed": True, "version": "1.0-1", "wanted": "1.0-1", "expect": "installed"})
    read = RmmEvidence.objects.filter(related_id=job.pk).order_by("history_sequence").last()
    [row] = world["psa"].get(url).json()["results"]
    assert row["name"] == "hello-rmm" and row["installed"] is True and row["version"] == "1.0-1"
    assert row["package"]["id"] == str(pkg.pk) and row["package"]["revision"] == pkg.revision
    assert row["deployment_job"] == str(job.pk) and row["evidence"] == str(read.pk) and row["read_at"]
    console = Client()
    console.force_login(world["tech"].user)
    page = console.get(f"/console/assets/{world['agent'].asset_id}/").content.decode()
    panel = page[page.index('id="asset-software"') :]
    assert "<td>hello-rmm</td><td>installed</td><td>1.0-1</td>" in panel
    assert f"/api/v1/evidence/{read.pk}/content/" in panel

    # The rollback's read replaces it: one row per package name, its newest read.
    r = deploy(world, pkg, action="uninstall")
    removal = r.json()["jobs"][0]["id"]
    run(world, None)
    run(world, {"installed": False, "version": "", "wanted": "", "expect": "absent"})
    [row] = world["psa"].get(url).json()["results"]
    assert row["installed"] is False and row["version"] == "" and row["deployment_job"] == removal
    assert row["evidence"] == str(RmmEvidence.objects.filter(related_id=removal).order_by("history_sequence").last().pk)
    assert world["psa"].get(url + "?installed=true").json()["results"] == []
    assert world["psa"].get(url + "?installed=false").json()["count"] == 1

    # An asset outside the caller's sites is one that does not exist.
    assert caller("elsewhere", "psa", sites=[other_site]).get(url).status_code == 404


def test_a_failed_detection_read_is_recorded_as_what_it_found(world):
    job = DeploymentJob.objects.get(pk=deploy(world, package(world)).json()["jobs"][0]["id"])
    run(world, None)
    run(world, {"installed": True, "version": "0.9-3", "wanted": "1.0-1", "expect": "installed"})
    job.refresh_from_db()
    [row] = world["psa"].get(f"/api/v1/assets/{world['agent'].asset_id}/software/").json()["results"]
    assert job.status == "failed" and row["installed"] is True and row["version"] == "0.9-3"
