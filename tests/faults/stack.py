"""The parts the fault drills kill and stop, each a real process: a private PostgreSQL and a private
Redis (never the machine's shared ones; rmm/deploy/stores.py, as ``make prod-up`` runs them), the
ASGI server (uvicorn, as the agent tier runs it), the task cluster (``manage.py qcluster``) and the
agent. Plus what every drill checks at its end (:func:`assert_nothing_lost_twice_or_stuck`) and how
it measures recovery (:class:`Clock`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from rmm.deploy.stores import PrivatePostgres, PrivateRedis
from tests.e2e import flows
from tests.e2e.server import ROOT, Server, free_port

HISTORY_LOCK_KEY = 0x524D4D48  # rmm.history.services._PG_LOCK_KEY: held by whoever appends history


def wait_for(condition, timeout: float = 30.0, what: str = "condition", every: float = 0.2):
    """:func:`tests.e2e.flows.wait_for`, with the drills' longer default patience."""
    return flows.wait_for(condition, timeout, what, every)


class Clock:
    """Times a recovery from when it is made; each measure is printed and recorded on the test's
    report, and the suite lists them all at its end (tests/conftest.py)."""

    def __init__(self, drill: str, record):
        self.drill, self.record, self.started = drill, record, time.monotonic()

    def lap(self, what: str) -> float:
        return self.note(what, time.monotonic() - self.started)

    def note(self, what: str, seconds: float) -> float:
        print(f"[faults] {self.drill}: {what}: {seconds:.2f} s", flush=True)
        self.record(f"{RECOVERY}{self.drill}: {what}", round(seconds, 2))
        return seconds


RECOVERY = "recovery: "


class Stack(Server):
    """The product on the private PostgreSQL and Redis: uvicorn, the cluster, agents. Every part can
    be killed and started again; the drills talk to it only as users, agents and operators do."""

    def __init__(self, tmp: Path, pg: PrivatePostgres, redis: PrivateRedis, extra_env: dict | None = None):
        self.tmp, self.pg, self.redis = tmp, pg, redis
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dbname = f"rmm_faults_{uuid.uuid4().hex[:8]}"
        self.pg_admin_url = pg.url
        self._pg(f'CREATE DATABASE "{self.dbname}"')
        self.db_url = pg.url.rsplit("/", 1)[0] + "/" + self.dbname
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        self.env.update(
            DJANGO_SETTINGS_MODULE="rmm.settings",
            DATABASE_URL=self.db_url,
            REDIS_URL=redis.url,
            RMM_VAR_DIR=str(tmp / "var"),
            RMM_HEARTBEAT_INTERVAL="1",
            RMM_HEARTBEAT_MIN_SPACING_SECONDS="0",
            RMM_API_RATE="100000/min",
            RMM_AGENT_REFUSALS_PER_WINDOW="100000",  # tests refuse agents on purpose, often
            RMM_DB_POOL_TIMEOUT="2",  # the agent tier's short wait for a connection
            RMM_UNAVAILABLE_RETRY_AFTER="2",
            RMM_EXPORT_STALE_SECONDS="5",
            RMM_LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
        )
        self.env.update(extra_env or {})
        self.evidence_root = tmp / "var" / "evidence"
        self.runs = tmp / "runs"  # every script run appends its marker here: nothing may run twice
        self.runs.mkdir(mode=0o1777)
        os.chmod(self.runs, 0o1777)  # scripts run as nobody
        self.proc = self.cluster = None
        self.agents: list[tuple[subprocess.Popen, object]] = []
        self.log_path = tmp / "server.log"
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the stack

    # --- processes ------------------------------------------------------------------------

    def start(self) -> Stack:
        self.manage("migrate", "--noinput")
        self.start_server()
        self.start_cluster()
        return self

    def start_server(self) -> None:
        command = ["uvicorn", "--host", "127.0.0.1", "--port", str(self.port), "--no-access-log"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *command, "--timeout-keep-alive", "75", "rmm.asgi:application"],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._serving, timeout=60, what="the ASGI server serving")

    def _serving(self) -> bool:
        assert self.proc.poll() is None, f"the server exited: {self.log_tail()}"
        try:
            return urllib.request.urlopen(self.url + "/healthz", timeout=2).status == 200
        except OSError:
            return False

    def kill_server(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def kill_cluster(self) -> None:
        os.killpg(self.cluster.pid, signal.SIGKILL)  # the cluster and every worker it forked
        self.cluster.wait(10)

    def start_agent(self, w: dict) -> subprocess.Popen:
        log = open(self.tmp / f"agent-{w['hostname']}.log", "ab")  # noqa: SIM115 - closed in stop()
        proc = subprocess.Popen(
            [sys.executable, "-m", "rmm_agent", "run", "--state-dir", str(w["state"])],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.agents.append((proc, log))
        return proc

    def stop(self) -> None:
        for proc, log in self.agents:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            log.close()
        super().stop()  # the cluster, the server, the log and the database

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def log_size(self) -> int:
        self.log.flush()
        return self.log_path.stat().st_size

    def log_since(self, size: int) -> str:
        """What the server and the cluster logged since the log had ``size`` bytes."""
        with open(self.log_path, "rb") as fh:
            fh.seek(size)
            return fh.read().decode(errors="replace")

    def db(self):
        import psycopg

        return psycopg.connect(self.db_url, autocommit=True)

    def hold_history_lock(self):
        """A connection that holds the history's lock (until it rolls back): whoever appends to the
        history, or records anything, waits for it. Drills use it to stop a process between two steps."""
        import psycopg

        conn = psycopg.connect(self.db_url)
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [HISTORY_LOCK_KEY])
        return conn

    def waiting_for_history_lock(self) -> int:
        """How many other sessions are waiting for the history's lock."""
        with self.db() as conn:
            return conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = %s",
                [HISTORY_LOCK_KEY],
            ).fetchone()[0]

    # --- what users and operators do ----------------------------------------------------

    def script(self, w: dict, body: str) -> dict:
        """A script (for one job) that leaves its mark in ``runs`` each time it runs, then does ``body``."""
        mark = f"run-{uuid.uuid4().hex[:8]}"
        return flows.publish(self, w, f"echo {mark} >> {self.runs}/log\n{body}")

    def job(self, w: dict, job_id: str) -> dict:
        return self.request("GET", f"/api/v1/script-jobs/{job_id}/", token=w["psa"]).json()

    def finished(self, w: dict, job_id: str):
        job = self.job(w, job_id)
        return job if job["status"] in ("succeeded", "failed", "aborted", "lost", "rejected") else None


FINAL_JOB = {"succeeded", "failed", "aborted", "lost", "rejected"}
FINAL_EXPORT = {"done", "failed"}

OUTCOME = """
import json
from evidence.models import EvidenceExport, RmmEvidence
from rmm.engine.models import Instruction
from scripting.models import ScriptJob, ScriptResult
jobs = {str(j.pk): j.status for j in ScriptJob.objects.all()}
instructions = [
    {"id": str(i.pk), "job": str(i.job_id), "status": i.status, "result_hash": i.result_hash}
    for i in Instruction.objects.all()
]
evidence = {}
for related in RmmEvidence.objects.filter(evidence_type="script_result").values_list("related_id", flat=True):
    evidence[str(related)] = evidence.get(str(related), 0) + 1
results = [str(pk) for pk in ScriptResult.objects.values_list("job_id", flat=True)]
exports = {str(e.pk): e.status for e in EvidenceExport.objects.all()}
print(json.dumps({"jobs": jobs, "instructions": instructions, "evidence": evidence, "results": results,
                  "exports": exports}))
"""


def assert_nothing_lost_twice_or_stuck(stack: Stack) -> dict:
    """What every drill ends with, over everything the stack ever did:

    - nothing stuck: every job and every instruction is final, every export done or failed;
    - nothing lost: every instruction that got a result has its stored result and its job one
      evidence record per instruction (every finished instruction yields evidence);
    - nothing run twice: each script's mark appears at most once in the runs log;
    - ``verify_history`` passes.
    """
    out = stack.manage("shell", "--verbosity", "0", "-c", OUTCOME).stdout
    state = json.loads(out)
    stuck = {pk: status for pk, status in state["jobs"].items() if status not in FINAL_JOB}
    assert not stuck, f"jobs stuck: {stuck}"
    assert all(i["status"] in FINAL_JOB for i in state["instructions"]), state["instructions"]
    assert set(state["exports"].values()) <= FINAL_EXPORT, f"exports stuck: {state['exports']}"
    per_job: dict[str, int] = {}
    for inst in state["instructions"]:
        per_job[inst["job"]] = per_job.get(inst["job"], 0) + 1
        if inst["result_hash"]:
            assert inst["job"] in state["results"], f"instruction {inst['id']} lost its result"
    for job_id, count in per_job.items():
        assert state["evidence"].get(job_id, 0) == count, f"job {job_id}: evidence {state['evidence'].get(job_id)}"
    log = stack.runs / "log"
    marks = log.read_text().split() if log.exists() else []
    twice = {mark for mark in marks if marks.count(mark) > 1}
    assert not twice, f"run twice: {twice}"
    verified = stack.manage("verify_history", check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    return state
