"""A deployment over many agents is the engine's batch: a package whose detection read fails on
the canary halts the rollout at its threshold, no ring after it is released (by results or by the
sweep), and only an approver who did not request it resumes it. The agents are played in process
by the engine's own lease and result services (tests/e2e/test_deployment.py runs the real one)."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from deployment import services as deployment
from deployment.models import DeploymentJob
from rmm.artefacts import services as artefacts
from rmm.engine import services as engine
from rmm.engine.models import Instruction
from rmm.history.models import HistoryEvent
from rmm.inventory.models import Agent
from rmm_agent.results import make_result
from tests.helpers import approved_authority, make_agent
from tests.support.profiles import grant_privileged_approval

NOT_INSTALLED = {"installed": False, "version": "", "wanted": ""}
INSTALLED = {"installed": True, "version": "1.0-1", "wanted": ""}


@pytest.fixture
def world(caller, site, settings):
    settings.RMM_TASKS_SYNC = True
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    grant_privileged_approval(boss.user)
    agents = [make_agent(site, f"d{n:02d}")[0] for n in range(8)]
    Agent.objects.filter(pk__in=[a.pk for a in agents]).update(capabilities="artefacts,structured_result", protocol=2)
    for agent in agents:
        agent.refresh_from_db()
    made = deployment.register_upload(
        tech.user,
        upload=io.BytesIO(b"a package that will not install"),
        name="flaky",
        version="1.0-1",
        installer_type="deb",
        silent_args="",
        detection={"type": "package", "name": "flaky"},
        uninstall_args="",
    )
    return {
        "psa": psa,
        "tech": tech,
        "boss": boss,
        "task": approved_authority(site, psa.user),
        "package": artefacts.decide(made, boss.user, approve=True),
        "agents": agents,
    }


def run_round(w, capture, detection: dict) -> int:
    """Every agent leases what is released for it and reports: the install exits 0, the detection
    read says ``detection``. How many results were sent."""
    sent = 0
    for agent in w["agents"]:
        for inst in engine.lease(agent, 1, timezone.now()):
            structured = detection if inst.step == 1 else None
            with capture(execute=True):
                status, answer = engine.ingest_result(
                    agent, make_result(str(inst.pk), "completed", exit_code=0, stdout="x", structured=structured)
                )
            assert status == 201, answer
            sent += 1
    return sent


def issued(batch_id) -> int:
    jobs = DeploymentJob.objects.filter(batch_id=batch_id).values("pk")
    return Instruction.objects.filter(job_kind="deployment", job_id__in=jobs, step=0).count()


def test_a_failing_detection_on_the_canary_halts_the_rollout_and_only_an_approver_resumes_it(
    world, django_capture_on_commit_callbacks
):
    plan = {"canary": 1, "ring_size": 3, "interval_seconds": 0, "failure_threshold_percent": 0}
    body = {
        "package": str(world["package"].pk),
        "assets": [str(agent.asset_id) for agent in world["agents"]],
        "psa_task_id": str(world["task"].pk),
        "plan": plan,
    }
    with django_capture_on_commit_callbacks(execute=True):
        r = world["psa"].post("/api/v1/deployments/", body, format="json")
    assert r.status_code == 201, r.content
    batch = r.json()["batch"]
    assert r.json()["count"] == 8 and issued(batch) == 1  # the canary alone

    # The canary installs (exit 0) but its detection read says not installed: the job fails.
    assert run_round(world, django_capture_on_commit_callbacks, NOT_INSTALLED) == 1  # install
    assert run_round(world, django_capture_on_commit_callbacks, NOT_INSTALLED) == 1  # detection
    seen = world["psa"].get(f"/api/v1/batches/{batch}/").json()
    assert seen["status"] == "halted", seen
    assert seen["halt_reason"] == "1 of 1 finished jobs failed, past the threshold of 0 %"
    canary = DeploymentJob.objects.get(batch_id=batch, ring=0)
    assert canary.status == "failed" and canary.status_reason.endswith("detection: not installed")

    # Nothing after the canary is released, by results or by the sweep.
    assert run_round(world, django_capture_on_commit_callbacks, INSTALLED) == 0
    with django_capture_on_commit_callbacks(execute=True):
        engine.sweep(timezone.now() + timedelta(minutes=11))
    assert issued(batch) == 1

    # The console shows the rollout on the engine's batch page, ring by ring, with why it halted.
    console = Client()
    console.force_login(world["tech"].user)
    page = console.get(f"/console/batches/{batch}/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "deployment" in text and "halted" in text and "past the threshold of 0 %" in text
    assert "Rings released</dt><dd>1 of 4" in text and "<td>canary</td><td>1</td>" in text

    # Resuming needs an approver who did not request it; the PSA that asked may not.
    resume = f"/api/v1/batches/{batch}/resume/"
    assert world["psa"].post(resume).status_code == 403
    assert world["tech"].post(resume).status_code == 403
    assert HistoryEvent.objects.filter(action="refused.batch.resume").count() == 2
    with django_capture_on_commit_callbacks(execute=True):
        r = world["boss"].post(resume)
    assert r.status_code == 200 and r.json()["status"] == "running", r.content
    assert issued(batch) == 4  # the next ring of three
    assert run_round(world, django_capture_on_commit_callbacks, INSTALLED) == 3  # their installs
    run_round(world, django_capture_on_commit_callbacks, INSTALLED)  # their detection reads
    ring = DeploymentJob.objects.filter(batch_id=batch, ring=1)
    assert sorted(ring.values_list("status", flat=True)) == ["succeeded"] * 3
    assert issued(batch) == 7  # that ring done, the next one follows


def test_the_kill_switch_stops_a_rollout_at_once(world, caller, site, django_capture_on_commit_callbacks):
    plan = {"canary": 2, "ring_size": 3, "interval_seconds": 0, "failure_threshold_percent": 50}
    body = {
        "package": str(world["package"].pk),
        "assets": [str(agent.asset_id) for agent in world["agents"]],
        "psa_task_id": str(world["task"].pk),
        "plan": plan,
    }
    with django_capture_on_commit_callbacks(execute=True):
        batch = world["psa"].post("/api/v1/deployments/", body, format="json").json()["batch"]
    assert run_round(world, django_capture_on_commit_callbacks, INSTALLED) == 2  # the canary installs
    admin = caller("root", "admin")
    with django_capture_on_commit_callbacks(execute=True):
        r = admin.post("/api/v1/kill-switches/", {"scope": "site", "target": site.name, "reason": "bad build"})
    assert r.status_code == 201, r.content

    # The canary's detection reads, due next, are never issued; nothing else is ever released.
    assert run_round(world, django_capture_on_commit_callbacks, INSTALLED) == 0
    with django_capture_on_commit_callbacks(execute=True):
        engine.sweep(timezone.now() + timedelta(minutes=11))
    assert issued(batch) == 2
    jobs = DeploymentJob.objects.filter(batch_id=batch)
    assert set(jobs.values_list("status", flat=True)) == {"aborted"}
    assert world["psa"].get(f"/api/v1/batches/{batch}/").json()["status"] == "aborted"
