"""Issue 11, defect 8: an account that writes its own PSA authority and requests jobs on it gets no
job queued without a second person, unless its site's policy allows it. Such jobs are not
refused: they wait in awaiting_approval for an approver."""

import io

import pytest
from django.core.management import call_command

from rmm.engine.models import Instruction
from rmm.history.models import HistoryEvent
from scripting.models import ScriptJob
from tests.helpers import approved_authority, approved_script, make_agent, post_json


@pytest.fixture
def w(caller, site):
    tech, boss, psa = caller("tech", "technician"), caller("boss", "approver"), caller("psa", "psa")
    script = approved_script(tech.user, boss.user, name="quick")  # no per-job approval asked
    agent, _ = make_agent(site, "alpha-1")
    # the psa account wrote the case and the task; the site keeps the default policy
    task = approved_authority(site, psa.user, self_authorized_jobs=False)
    return {"tech": tech, "boss": boss, "psa": psa, "script": script, "asset": agent.asset, "task": task}


def request_job(who, w):
    body = {"script": str(w["script"].pk), "asset": str(w["asset"].pk), "psa_task_id": str(w["task"].pk)}
    return post_json(who.client, "/api/v1/script-jobs/", body)


def test_a_job_on_authority_its_requester_wrote_waits_for_a_person(w):
    response = request_job(w["psa"], w)
    assert response.status_code == 201, response.content
    job = ScriptJob.objects.get(pk=response.json()["id"])
    assert job.status == "awaiting_approval"
    assert "wrote its own authority" in job.status_reason
    assert not Instruction.objects.filter(job_id=job.pk).exists()
    created = HistoryEvent.objects.get(action="job.created", subject_id=str(job.pk))
    assert created.payload["self_authorized"] is True
    # The psa account cannot let it through; an approver can.
    assert post_json(w["psa"].client, f"/api/v1/script-jobs/{job.pk}/approve/", {}).status_code == 403
    assert post_json(w["boss"].client, f"/api/v1/script-jobs/{job.pk}/approve/", {}).status_code == 200
    job.refresh_from_db()
    assert job.status == "queued" and job.decided_by == w["boss"].user


def test_a_batch_on_its_own_authority_waits_too(w):
    body = {"script": str(w["script"].pk), "assets": [str(w["asset"].pk)], "psa_task_id": str(w["task"].pk)}
    response = post_json(w["psa"].client, "/api/v1/script-jobs/batch/", body)
    assert response.status_code == 201, response.content
    assert set(ScriptJob.objects.values_list("status", flat=True)) == {"awaiting_approval"}


def test_someone_elses_authority_is_not_self_authorized(w):
    response = request_job(w["tech"], w)
    assert response.status_code == 201
    assert response.json()["status"] == "queued"


def test_the_site_policy_lets_it_run_and_is_recorded(w, site):
    out = io.StringIO()
    call_command("rmm_site_policy", site.name, "--allow-self-authorized-jobs", stdout=out)
    assert out.getvalue().strip() == "alpha: allow_self_authorized_jobs=on"
    changed = HistoryEvent.objects.filter(action="site.policy_changed").latest("sequence")
    assert changed.actor == "cli:rmm_site_policy"
    assert changed.payload["after"] == {"allow_self_authorized_jobs": True}
    assert request_job(w["psa"], w).json()["status"] == "queued"
    call_command("rmm_site_policy", site.name, "--deny-self-authorized-jobs", stdout=io.StringIO())
    assert request_job(w["psa"], w).json()["status"] == "awaiting_approval"
