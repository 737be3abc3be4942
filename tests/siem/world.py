"""A site with an agent, authority and an approved script, and a job run to its end by the agent's
protocol whenever a test asks: its events join the history the SIEM feed carries."""

from __future__ import annotations

import json
from types import SimpleNamespace

from scripting import services as scripting
from tests.helpers import approved_authority, approved_script, heartbeat, make_agent, report


def job_world(caller, site, settings) -> SimpleNamespace:
    settings.RMM_TASKS_SYNC = True
    settings.RMM_PSA_WEBHOOK_URL = ""
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    agent, auth = make_agent(site, "web-01")
    task = approved_authority(site, psa.user)
    script = approved_script(tech.user, boss.user)

    def run_job():
        job = scripting.create_script_job(psa.user, script_id=script.pk, asset_id=agent.asset_id, psa_task_id=task.pk)
        [leased] = heartbeat(auth)["instructions"]
        answer = report(auth, json.loads(leased["payload"])["instruction_id"])
        assert answer.status_code == 201, answer.content
        return job

    return SimpleNamespace(run_job=run_job, site=site)
