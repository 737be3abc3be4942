"""A rollout over seven enrolled agents, as root: the canary is the real agent, which fetches a
.deb built in the test by its hash and installs it with dpkg; the other six are played by the
test over the agent protocol (they verify each signed instruction and report what they are told).
Two of the next ring report that the detection read found nothing installed: the rollout halts
past its threshold, the last ring is never released, and only an approver resumes it."""

from __future__ import annotations

import base64
import os
import uuid
from datetime import UTC, datetime

import pytest

from rmm_agent import keyring
from rmm_agent.protocol import verify_instruction
from rmm_agent.results import make_result
from tests.e2e.flows import agent_once, make_world, privileged_approver, upload_package, wait_for
from tests.e2e.server import Server
from tests.e2e.test_deployment import installed, rule

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dpkg -i needs root (CI runs as root)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("rollout")).start()
    yield srv
    srv.stop()


class Played:
    """An agent enrolled through the real endpoint and played by the test: each leased step's
    signature is checked as rmm_agent checks it; an install step (it names the artefact) reports
    exit 0, a detection step the read it is given."""

    def __init__(self, server: Server, token: str, hostname: str) -> None:
        self.server = server
        facts = {"hostname": hostname, "os": "Linux", "architecture": "x86_64"}
        body = {"token": token, "facts": facts, "protocol": 2, "capabilities": ["structured_result", "artefacts"]}
        r = server.request("POST", "/api/v1/agent/enroll/", body)
        assert r.status == 201, r.body
        identity = r.json()
        self.agent_id, self.asset_id = identity["agent_id"], identity["asset_id"]
        self.auth = f"Agent {identity['agent_id']}:{identity['secret']}"
        pinned = base64.b64decode(identity["server_public_key"])
        self.keys = {keyring.key_id(pinned): pinned}

    def round(self, installed_now: bool) -> list[str]:
        """One heartbeat and a result for each step it leased: which steps ("install", "detection")."""
        body = {"agent_version": "0.1.0", "protocol": 2, "capabilities": ["structured_result", "artefacts"]}
        r = self.server.request("POST", "/api/v1/agent/heartbeat/", {**body, "running": [], "capacity": 4}, self.auth)
        assert r.status == 200, r.body
        ran = []
        for envelope in r.json()["instructions"]:
            payload = verify_instruction(envelope, self.keys, self.agent_id, datetime.now(UTC))
            step = "install" if payload.get("artefacts") else "detection"
            read = {"installed": installed_now, "version": "1.0-1" if installed_now else "", "wanted": "1.0-1"}
            result = make_result(
                payload["instruction_id"],
                "completed",
                exit_code=0,
                stdout="ok\n",
                structured={**read, "expect": "installed"} if step == "detection" else None,
            )
            answer = self.server.request("POST", "/api/v1/agent/results/", result, self.auth)
            assert answer.status in (200, 201), answer.body
            ran.append(step)
        return ran


def lease_each(agents: list[Played], installed_now: bool) -> list[list[str]]:
    """A round for each agent until each has leased a step (a ring is released by the task
    cluster, a moment after what released it): what each ran."""
    ran: dict[str, list[str]] = {agent.agent_id: [] for agent in agents}

    def all_leased() -> bool:
        for agent in agents:
            ran[agent.agent_id] = ran[agent.agent_id] or agent.round(installed_now)
        return all(ran.values())

    wait_for(all_leased, timeout=30, what="a step for each agent")
    return [ran[agent.agent_id] for agent in agents]


def test_a_rollout_with_the_real_agent_as_canary_halts_past_its_threshold_until_an_approver_resumes(
    server, deb, tmp_path
):
    name, path = deb
    w = make_world(server)
    package = upload_package(server, w["tech"], name, path.read_bytes(), detection=rule(name))
    r = server.request("POST", f"/api/v1/packages/{package['id']}/approve/", token=privileged_approver(server))
    assert r.status == 200, r.body
    token = server.manage("rmm_enrollment_token", "--site", w["site"], "--uses", "6").stdout.strip()
    played = [Played(server, token, f"sim-{uuid.uuid4().hex[:6]}") for _ in range(6)]
    plan = {"canary": 1, "ring_size": 3, "interval_seconds": 0, "failure_threshold_percent": 25}
    r = server.request(
        "POST",
        "/api/v1/deployments/",
        {
            "package": package["id"],
            "assets": [w["asset"]] + [p.asset_id for p in played],  # in this order: the real agent first
            "psa_task_id": w["task"],
            "plan": plan,
        },
        w["psa"],
    )
    assert r.status == 201, r.body
    batch = r.json()["batch"]

    def seen() -> dict:
        return server.request("GET", f"/api/v1/batches/{batch}/", token=w["psa"]).json()

    # Only the canary, the real agent, is released: it installs the .deb and reads it installed.
    assert all(p.round(True) == [] for p in played)
    agent_once(server, w)  # fetch by hash, dpkg -i
    agent_once(server, w)  # the detection read
    assert installed(name)
    software = server.request("GET", f"/api/v1/assets/{w['asset']}/software/", token=w["psa"]).json()["results"]
    assert [(s["name"], s["installed"], s["version"]) for s in software] == [(name, True, "1.0-1")]

    # The next ring: its first agent's read finds nothing installed, 1 of 2 finished jobs failed,
    # past 25 %: the rollout halts itself.
    ring, last = played[:3], played[3:]
    assert lease_each(ring[:1], False) == [["install"]]
    assert ring[0].round(False) == ["detection"]
    status = seen()
    assert status["status"] == "halted", status
    assert status["halt_reason"] == "1 of 2 finished jobs failed, past the threshold of 25 %"
    # What was released finishes; nothing after it is released.
    assert lease_each(ring[1:], True) == [["install"]] * 2
    assert [agent.round(True) for agent in ring[1:]] == [["detection"]] * 2
    assert all(agent.round(True) == [] for agent in last)

    # Resuming needs an approver who did not request it.
    resume = f"/api/v1/batches/{batch}/resume/"
    assert server.request("POST", resume, token=w["psa"]).status == 403
    assert server.request("POST", resume, token=w["tech"]).status == 403
    r = server.request("POST", resume, token=w["approver"])
    assert r.status == 200 and r.json()["status"] == "running", r.body
    assert lease_each(last, True) == [["install"]] * 3
    assert [agent.round(True) for agent in last] == [["detection"]] * 3
    jobs = server.request("GET", f"/api/v1/deployment-jobs/?batch={batch}&limit=50", token=w["psa"]).json()["results"]
    assert sorted(job["status"] for job in jobs) == ["failed"] + ["succeeded"] * 6
