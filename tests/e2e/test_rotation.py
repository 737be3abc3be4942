"""Secret rotation between the real server and the real agent: the agent stores the new secret
before it uses it, work carries on across the rotation, and the old secret then stops working."""

import json
import uuid

from tests.e2e.flows import agent_once, make_world, publish, run_job, tokens


def test_an_admin_rotates_an_agents_secret_without_interrupting_work(server):
    w = make_world(server)
    agent_id, old = w["config"]["agent_id"], w["config"]["secret"]
    [admin] = tokens(server, {f"admin-{uuid.uuid4().hex[:6]}": "admin"})

    assert server.request("POST", f"/api/v1/agents/{agent_id}/rotate/", token=w["tech"]).status == 403
    r = server.request("POST", f"/api/v1/agents/{agent_id}/rotate/", token=admin)
    assert r.status == 200, r.body
    assert r.json()["rotation_pending"] is True

    # The heartbeat (old secret) brings the new secret and a job; the result goes with the new one.
    script = publish(server, w, "echo across the rotation\n")
    job = run_job(server, w, script["id"])
    done = agent_once(server, w)
    assert "agent secret rotated" in done.stderr

    new = json.loads((w["state"] / "config.json").read_text())["secret"]
    assert new != old
    body = server.request("GET", f"/api/v1/script-jobs/{job['id']}/", token=w["psa"]).json()
    assert body["status"] == "succeeded", body
    assert body["result"]["stdout"] == "across the rotation\n"
    assert server.request("GET", f"/api/v1/agents/{agent_id}/", token=admin).json()["rotation_pending"] is False

    beat = {"agent_version": "0.1.0", "running": [], "capacity": 0}
    assert server.request("POST", "/api/v1/agent/heartbeat/", beat, f"Agent {agent_id}:{old}").status == 401
    answer = server.request("POST", "/api/v1/agent/heartbeat/", beat, f"Agent {agent_id}:{new}")
    assert answer.status == 200
    assert "new_secret" not in answer.json()
    agent_once(server, w)  # and the agent carries on with what it stored
