"""The kill switch wins (Law 6), against a real server and a real agent running its loop:
it kills running work within heartbeats, keeps queued work from ever starting, refuses new work
(and records that), and only an approver with a reason lets work run again."""

import json
import random
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.e2e.flows import agent_once, make_world, publish, run_job, tokens, wait_for
from tests.e2e.server import ROOT


def processes_with(argument: str) -> list[int]:
    """Live (non-zombie) pids whose command line has ``argument`` as one of its words."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if argument.encode() in words and stat[stat.rfind(")") + 2] not in "ZX":
            pids.append(int(entry.name))
    return pids


def job(server, w, job_id: str) -> dict:
    return server.request("GET", f"/api/v1/script-jobs/{job_id}/", token=w["psa"]).json()


def new_job_status(server, w, script_id: str, token: str | None = None) -> int:
    r = server.request(
        "POST",
        "/api/v1/script-jobs/",
        {"script": script_id, "asset": w["asset"], "psa_task_id": w["task"]},
        token or w["psa"],
    )
    return r.status


def refusals_for(server, switch_id: str) -> list[dict]:
    """Payloads of the job-creation refusals the history holds for this kill switch."""
    out = server.manage(
        "shell",
        "--verbosity",
        "0",
        "-c",
        "import json\n"
        "from rmm.history.models import HistoryEvent\n"
        "print(json.dumps([e.payload for e in HistoryEvent.objects.filter(action='refused.script_job.create')]))",
    ).stdout
    return [p for p in json.loads(out) if p.get("kill_switch") == switch_id]


def engage(server, token: str, scope: str, target: str | None, reason: str) -> str:
    r = server.request("POST", "/api/v1/kill-switches/", {"scope": scope, "target": target, "reason": reason}, token)
    assert r.status == 201, r.body
    assert r.json()["engaged"] is True
    return r.json()["id"]


def release(server, token: str, switch_id: str, reason: str | None = "incident closed"):
    data = {} if reason is None else {"reason": reason}
    return server.request("POST", f"/api/v1/kill-switches/{switch_id}/release/", data, token)


@pytest.fixture
def loop_agent(server, tmp_path):
    """Start the world's agent in loop mode (1 s heartbeats); stop it at the end."""
    started = []

    def start(w) -> subprocess.Popen:
        log = open(tmp_path / "agent.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [sys.executable, "-m", "rmm_agent", "run", "--state-dir", str(w["state"])],
            cwd=ROOT,
            env=server.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        started.append((proc, log))
        return proc

    yield start
    for proc, log in started:
        proc.terminate()
        try:
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


def test_asset_switch_kills_running_work_refuses_new_work_until_an_approver_releases_it(server, loop_agent):
    w = make_world(server)
    agent = loop_agent(w)
    marker = f"started-{uuid.uuid4().hex[:8]}"
    duration = f"60.{random.randrange(10**6):06d}"  # a unique argument, to find this very sleep
    escape = f"61.{random.randrange(10**6):06d}"  # a child that leaves the script's session
    long = publish(server, w, f"echo {marker}\nsetsid sleep {escape} &\nsleep {duration}\necho never\n")
    long_job = run_job(server, w, long["id"])

    wait_for(lambda: job(server, w, long_job["id"])["status"] == "running", what="job running")
    [sleeper] = wait_for(lambda: processes_with(duration), what="sleep started")
    [escaped] = wait_for(lambda: processes_with(escape), what="escaping sleep started")

    switch = engage(server, w["tech"], "asset", w["asset"], "suspicious activity on this host")

    aborted = wait_for(lambda: (j := job(server, w, long_job["id"]))["status"] == "aborted" and j, what="job aborted")
    assert aborted["status_reason"].startswith(f"kill switch engaged on asset {w['hostname']}"), aborted
    assert aborted["result"]["stdout"] == f"{marker}\n"  # what it printed until it was killed
    assert aborted["result"]["exit_code"] is None
    wait_for(lambda: not processes_with(duration), timeout=5, what="sleep gone")
    assert not processes_with(escape), "a setsid child survived the kill switch"
    assert agent.poll() is None, "the agent itself keeps running"
    [evidence] = aborted["evidence"]
    document = server.request("GET", f"/api/v1/evidence/{evidence}/content/", token=w["psa"]).json()
    killed = {item["pid"]: item["command"] for item in document["result"]["containment"]["killed"]}
    assert killed.get(escaped) == f"sleep {escape}", document["result"]["containment"]
    assert killed.get(sleeper) == f"sleep {duration}"

    # While engaged, no new work on the asset, and the refusal is on the record.
    quick = publish(server, w, "echo back\n")
    assert new_job_status(server, w, quick["id"]) == 403
    [refusal] = refusals_for(server, switch)
    assert refusal["asset"] == w["asset"]
    assert refusal["reason"] == f"kill switch engaged on asset {w['hostname']}"

    # Releasing needs an approver, and a reason.
    assert release(server, w["tech"], switch).status == 403
    assert release(server, w["approver"], switch, reason=None).status == 400
    assert release(server, w["approver"], switch, reason="   ").status == 400
    r = release(server, w["approver"], switch, reason="host reimaged and checked")
    assert r.status == 200, r.body
    assert r.json()["engaged"] is False

    again = run_job(server, w, quick["id"])
    done = wait_for(
        lambda: (j := job(server, w, again["id"]))["status"] in ("succeeded", "failed") and j, what="job finished"
    )
    assert done["status"] == "succeeded", done
    assert done["result"]["stdout"] == "back\n"
    assert sleeper not in processes_with(duration)


def test_site_and_global_switches_stop_queued_work_before_it_starts(server):
    w = make_world(server)  # its agent is not running: work stays queued until asked
    other = make_world(server)
    script = publish(server, w, "echo must not run\n")
    [admin] = tokens(server, {f"admin-{uuid.uuid4().hex[:6]}": "admin"})

    queued = run_job(server, w, script["id"])
    site_switch = engage(server, w["tech"], "site", w["site"], "site under investigation")
    try:
        first = job(server, w, queued["id"])
        assert first["status"] == "aborted"
        assert first["status_reason"].startswith(f"kill switch engaged on site {w['site']}")
        assert new_job_status(server, w, script["id"]) == 403
        assert len(refusals_for(server, site_switch)) == 1
    finally:
        assert release(server, w["approver"], site_switch).status == 200

    # Global scope, by an admin: queued work everywhere ends, new work anywhere is refused.
    queued_again = run_job(server, w, script["id"])
    global_switch = engage(server, admin, "global", None, "fleet-wide incident")
    try:
        assert job(server, w, queued_again["id"])["status"] == "aborted"
        other_script = publish(server, other, "echo other\n")
        assert new_job_status(server, other, other_script["id"]) == 403
        assert [r["asset"] for r in refusals_for(server, global_switch)] == [other["asset"]]
    finally:
        assert release(server, w["approver"], global_switch).status == 200

    # The agent, asked now, gets nothing to run: both jobs ended without a start or a result.
    done = agent_once(server, w)
    assert " ran " not in done.stderr
    for job_id in (queued["id"], queued_again["id"]):
        body = job(server, w, job_id)
        assert (body["status"], body["started_at"], body["result"]) == ("aborted", None, None), body
    assert new_job_status(server, other, other_script["id"]) == 201
