"""A job's status reads the same word in the console, the API and the evidence reports (CSV, HTML,
PDF): a script that exits 3 "failed" everywhere, never "completed (exit 3)"."""

import json

import pytest
from django.test import Client

from evidence import report as evidence_report
from evidence import services
from evidence.models import RmmEvidence
from rmm.engine.states import status_word
from tests.helpers import approved_authority, heartbeat, make_agent, publish, report


@pytest.fixture
def failed_job(caller, site):
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    agent, auth = make_agent(site, "web-01")
    task = approved_authority(site, psa.user)
    script = publish(tech, boss, content="exit 3\n")
    job = psa.post(
        "/api/v1/script-jobs/",
        {"script": script["id"], "asset": str(agent.asset_id), "psa_task_id": str(task.pk)},
        format="json",
    ).json()
    inst = json.loads(heartbeat(auth)["instructions"][0]["payload"])
    assert report(auth, inst["instruction_id"], stdout="", exit_code=3).status_code == 201
    return {"id": job["id"], "psa": psa, "tech": tech}


def test_a_failed_job_says_failed_in_the_console_the_api_and_the_pdf(failed_job):
    api = failed_job["psa"].get(f"/api/v1/script-jobs/{failed_job['id']}/").json()
    listed = failed_job["psa"].get("/api/v1/jobs/").json()["results"][0]
    browser = Client()
    browser.force_login(failed_job["tech"].user)
    page = browser.get(f"/console/jobs/script/{failed_job['id']}/").content.decode()
    record = RmmEvidence.objects.get()
    summary = evidence_report.summarize(record.evidence_type, json.loads(services.read_blob(record)))

    word = status_word("failed")
    assert api["status"] == listed["status"] == word
    assert f'data-field="status">{word}</span>' in page
    assert summary["result"].split(" ")[0] == word, summary["result"]
    assert summary["result"] == "failed (exit 3)"
    assert "completed" not in summary["result"]
