"""Agents served by uvicorn workers (the agent tier of docs/performance.md and the README's
production section) while people and the PSA use the daphne worker: the same application."""

import json

from tests.e2e.flows import agent_once, make_world, publish, run_job


def test_an_agent_served_by_a_uvicorn_worker_runs_a_job_end_to_end(server):
    tier = server.second_worker("uvicorn")
    w = make_world(server)
    config_path = w["state"] / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(dict(config, server=tier)))
    script = publish(server, w, "echo from the agent tier\n")
    job = run_job(server, w, script["id"])

    agent_once(server, w)

    job = server.request("GET", f"/api/v1/script-jobs/{job['id']}/", token=w["psa"]).json()
    assert job["status"] == "succeeded", job
    assert job["result"]["stdout"] == "from the agent tier\n"
    assert len(job["evidence"]) == 1
    held = server.request(
        "POST",
        "/api/v1/agent/heartbeat/",
        {"capacity": 1, "wait": 1},
        token=f"Agent {config['agent_id']}:{config['secret']}",
        base=tier,
    )
    assert (held.status, held.json()["instructions"]) == (200, [])
