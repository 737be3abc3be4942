"""Structured results and reboots end to end: a real server with the test-only step kind, the
real agent as a subprocess. A step's JSON document is parsed by the server and decides its
step; a step that reboots (the reboot simulated: the agent's reboot command only leaves a mark,
and the test stops the agent's process and starts it again on the same state dir) resumes the
job at its next step once the agent is back, and a reboot that never comes back ends it lost."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from tests.e2e.flows import agent_once, make_world, wait_for
from tests.e2e.server import ROOT, Server

pytestmark = pytest.mark.slow

GRACE = 30


@pytest.fixture(scope="module")
def step_server(tmp_path_factory):
    env = {"DJANGO_SETTINGS_MODULE": "tests.settings", "RMM_REBOOT_GRACE_SECONDS": str(GRACE)}
    srv = Server(tmp_path_factory.mktemp("reboots"), env).start()
    yield srv
    srv.stop()


def show(server, job_id: str) -> dict:
    return json.loads(server.manage("stepkind_job", "show", job_id).stdout)


def create(server, w, steps: int, *options: str) -> str:
    return server.manage("stepkind_job", "create", w["hostname"], w["task"], str(steps), *options).stdout.strip()


def start_agent(server, w, mark) -> subprocess.Popen:
    env = dict(server.env, RMM_AGENT_REBOOT_COMMAND=f"touch {mark}")
    return subprocess.Popen(
        [sys.executable, "-m", "rmm_agent", "run", "--state-dir", str(w["state"])],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(w["state"].parent / f"{w['hostname']}.log", "ab"),  # noqa: SIM115 - the child holds it
    )


def test_a_structured_result_is_parsed_by_the_server_and_decides_the_step(step_server):
    w = make_world(step_server)
    job_id = create(step_server, w, 2, "--found", "2")
    agent_once(step_server, w)
    job = show(step_server, job_id)
    assert (job["status"], job["status_reason"]) == ("failed", "step 1 of 2 failed: found 2")
    [step] = job["instructions"]
    assert (step["structured"], step["reason"]) == ({"found": 2}, "found 2")


def test_a_reboot_step_resumes_the_job_at_its_next_step_once_the_agent_is_back(step_server):
    w = make_world(step_server)
    agent_once(step_server, w)  # a heartbeat: the server learns the agent can reboot
    job_id = create(step_server, w, 2, "--reboot-step", "0")
    mark = w["state"].parent / f"{w['hostname']}-rebooted"
    agent = start_agent(step_server, w, mark)
    try:
        wait_for(mark.exists, 30, "the reboot command")
        job = show(step_server, job_id)
        assert job["status"] == "running" and job["agent_rebooting"] is True
        assert [i["status"] for i in job["instructions"]] == ["succeeded", "queued"]
        assert json.loads((w["state"] / "reboot.json").read_text())["instruction_id"] == job["instructions"][0]["id"]
        agent.send_signal(signal.SIGKILL)  # the endpoint goes down
        agent.wait(timeout=10)
        agent = start_agent(step_server, w, mark)  # and comes back, with its state dir
        job = wait_for(lambda: (found := show(step_server, job_id))["status"] != "running" and found, 30, "the job")
        assert job["status"] == "succeeded", job
        assert job["agent_rebooting"] is False
        assert [i["status"] for i in job["instructions"]] == ["succeeded", "succeeded"]
        assert not (w["state"] / "reboot.json").exists()
    finally:
        agent.terminate()
        agent.wait(timeout=10)


def test_a_reboot_that_never_comes_back_ends_the_job_lost_with_that_reason(step_server):
    w = make_world(step_server)
    agent_once(step_server, w)
    job_id = create(step_server, w, 2, "--reboot-step", "0")
    mark = w["state"].parent / f"{w['hostname']}-rebooted"
    done = subprocess.run(
        [sys.executable, "-m", "rmm_agent", "run", "--state-dir", str(w["state"]), "--once"],
        cwd=ROOT,
        env=dict(step_server.env, RMM_AGENT_REBOOT_COMMAND=f"touch {mark}"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert mark.exists()
    # It never comes back: the server's clock runs past the grace, and the minute's sweep runs.
    step_server.manage(
        "shell",
        "--verbosity",
        "0",
        "-c",
        "from datetime import timedelta\nfrom django.utils import timezone\nfrom rmm.engine import services\n"
        f"services.sweep(timezone.now() + timedelta(seconds={GRACE + 1}))",
    )
    job = show(step_server, job_id)
    reason = f"the endpoint did not come back from its reboot within {GRACE} s"
    assert (job["status"], job["status_reason"]) == ("lost", f"step 2 of 2 lost: {reason}")
    assert [(i["status"], i["reason"]) for i in job["instructions"]][1] == ("lost", reason)
    assert job["agent_rebooting"] is False
    assert len(job["evidence"]) == 2  # the reboot step's and the lost step's
