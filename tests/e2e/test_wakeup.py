"""A real agent in loop mode with a 30 s heartbeat interval picks up a new job within about two
seconds: the server wakes it through its long-poll, and it leases at once."""

import signal
import subprocess
import sys
import time
from datetime import datetime

import pytest

from tests.e2e.flows import make_world, publish, run_job
from tests.e2e.server import ROOT, Server


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("wakeup"), {"RMM_HEARTBEAT_INTERVAL": "30"}).start()
    yield srv
    srv.stop()


def test_a_new_job_reaches_an_idle_agent_in_about_two_seconds(slow_server):
    server = slow_server
    w = make_world(server)
    script = publish(server, w, "echo woken\n")
    agent = subprocess.Popen(
        [sys.executable, "-m", "rmm_agent", "run", "--state-dir", str(w["state"])],
        cwd=ROOT,
        env=server.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)  # its first heartbeat is done; it now waits for up to 30 s
        job = run_job(server, w, script["id"])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            job = server.request("GET", f"/api/v1/script-jobs/{job['id']}/", token=w["psa"]).json()
            if job["status"] == "succeeded":
                break
            time.sleep(0.2)
        assert job["status"] == "succeeded", job
        # The server's own clocks: from the job's creation to its lease by the agent.
        waited = datetime.fromisoformat(job["started_at"]) - datetime.fromisoformat(job["created_at"])
        assert waited.total_seconds() < 2.5, waited
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=30)
    assert agent.returncode == 0, stderr
