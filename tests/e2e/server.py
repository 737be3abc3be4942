"""A real server in a subprocess: its own database, ASGI server (daphne) on a free port.

End-to-end tests talk to it only as users do: over HTTP, through ``manage.py`` commands
and through the real agent as a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from rmm.deploy.processes import free_port

ROOT = Path(__file__).resolve().parents[2]


class Response:
    def __init__(self, status: int, body: bytes, headers):
        self.status, self.body, self.headers = status, body, headers

    def json(self):
        return json.loads(self.body)


class Server:
    ssl_context: ssl.SSLContext | None = None  # for an https url: the CA it trusts
    enroll_args: tuple[str, ...] = ()  # the agent's own enrollment options, e.g. its --ca-file

    def __init__(self, tmp: Path, extra_env: dict | None = None, host: str = "127.0.0.1"):
        self.tmp = tmp
        self.host = host  # the address daphne listens on (a test's veth address: tests/e2e/test_containment.py)
        self.port = free_port()
        self.url = f"http://{host}:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        self.env.update(
            DJANGO_SETTINGS_MODULE="rmm.settings",
            RMM_VAR_DIR=str(tmp / "var"),
            RMM_HEARTBEAT_INTERVAL="1",
            RMM_HEARTBEAT_MIN_SPACING_SECONDS="0",
            RMM_API_RATE="100000/min",
            RMM_AGENT_REFUSALS_PER_WINDOW="100000",  # tests refuse agents on purpose, often
            RMM_TASK_QUEUE=f"rmm-e2e-{uuid.uuid4().hex[:10]}",  # servers of parallel test workers share Redis
            PYTHONUNBUFFERED="1",
        )
        self.env.update(extra_env or {})  # may override the defaults above
        self.pg_admin_url = None
        base = os.environ.get("DATABASE_URL", "")
        if base.startswith("postgres"):
            self.dbname = f"rmm_e2e_{uuid.uuid4().hex[:10]}"
            self.pg_admin_url = base.rsplit("/", 1)[0] + "/postgres"
            self._pg(f'CREATE DATABASE "{self.dbname}"')
            self.env["DATABASE_URL"] = base.rsplit("/", 1)[0] + "/" + self.dbname
        else:
            self.env.pop("DATABASE_URL", None)
            self.env["RMM_SQLITE_PATH"] = str(tmp / "e2e.sqlite3")
        self.proc = None
        self.cluster = None
        self.log = open(tmp / "server.log", "wb")  # noqa: SIM115 - lives as long as the server

    def _pg(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.pg_admin_url, autocommit=True) as conn:
            conn.execute(sql)

    def db(self):
        """A direct connection to the server's database (for tests that play a database owner)."""
        if self.pg_admin_url:
            import psycopg

            return psycopg.connect(self.env["DATABASE_URL"], autocommit=True)
        import sqlite3

        return sqlite3.connect(self.env["RMM_SQLITE_PATH"], isolation_level=None)

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def start(self, *, product: bool = False) -> Server:
        """daphne and a task cluster; with ``product``, ``manage.py rmm_run`` instead (what ``make
        run`` starts: migrations, the demo admin, daphne, the task cluster and a local agent)."""
        if product:
            command = [sys.executable, "manage.py", "rmm_run", "--port", str(self.port)]
        else:
            self.manage("migrate", "--noinput")
            command = [sys.executable, "-m", "daphne", "-b", self.host, "-p", str(self.port), "rmm.asgi:application"]
        self.proc = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        if not product:
            self.start_cluster()
        deadline = time.monotonic() + 120  # a first rmm_run migrates a fresh database first
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {(self.tmp / 'server.log').read_text()[-3000:]}")
            try:
                urllib.request.urlopen(self.url + "/accounts/login/", timeout=2).read()
                return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def start_cluster(self) -> None:
        """The django-q2 cluster runs background work (telling the PSA), as in production; in a
        session of its own, so that it and the workers it forks can be killed together."""
        self.cluster = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def second_worker(self, kind: str = "daphne", env: dict | None = None) -> str:
        """Another ASGI worker process on the same database, as production runs several: its URL.
        ``kind`` "uvicorn" is the agent tier that docs/performance.md measures; ``env`` settings
        of its own (one worker per kind and settings)."""
        self.workers = getattr(self, "workers", {})
        key = (kind, tuple(sorted((env or {}).items())))
        if key not in self.workers:
            port = free_port()
            command = {
                "daphne": ["daphne", "-b", "127.0.0.1", "-p", str(port)],
                "uvicorn": [
                    "uvicorn",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--no-access-log",
                    "--timeout-keep-alive",
                    "75",
                ],
            }[kind]
            proc = subprocess.Popen(
                [sys.executable, "-m", *command, "rmm.asgi:application"],
                cwd=ROOT,
                env={**self.env, **(env or {})},
                stdout=self.log,
                stderr=subprocess.STDOUT,
            )
            url = f"http://127.0.0.1:{port}"
            self.workers[key] = (proc, url)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"{kind} exited: {(self.tmp / 'server.log').read_text()[-3000:]}")
                try:
                    urllib.request.urlopen(url + "/accounts/login/", timeout=2).read()
                    break
                except OSError:
                    time.sleep(0.2)
        return self.workers[key][1]

    def diagnostics(self) -> str:
        """What a failing test should show of the server: the log's errors and 5xx answers, its last
        lines and, on PostgreSQL, the sessions that were waiting or holding a transaction open."""
        lines = (self.tmp / "server.log").read_text(errors="replace").splitlines()
        marks = ("Traceback", "ERROR", "WARNING", '" 5')
        wanted = [n for n, line in enumerate(lines) if any(mark in line for mark in marks)]
        shown = sorted({i for n in wanted[:40] for i in range(n, min(n + 15, len(lines)))})
        text = "\n".join(lines[i] for i in shown)[-20000:]
        text += "\n--- the log's last lines ---\n" + "\n".join(lines[-30:])[-6000:]
        if self.pg_admin_url:
            with self.db() as conn:
                rows = conn.execute(
                    "SELECT pid, state, wait_event_type, wait_event, now() - xact_start, left(query, 200)"
                    " FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ).fetchall()
            text += "\n--- pg_stat_activity ---\n" + "\n".join(map(str, rows))
        return f"=== server log (errors, 5xx) ===\n{text}"

    def leftovers(self) -> list[int]:
        """Processes still running with this server's state dir (what stopping it left behind)."""
        mark = f"RMM_VAR_DIR={self.env['RMM_VAR_DIR']}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                with contextlib.suppress(OSError):
                    if mark in (entry / "environ").read_bytes().split(b"\0"):
                        found.append(int(entry.name))
        return found

    def stop(self) -> None:
        for proc, _ in getattr(self, "workers", {}).values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        if self.cluster and self.cluster.poll() is None:
            os.killpg(self.cluster.pid, signal.SIGKILL)
            self.cluster.wait(10)
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)  # rmm_run gives its components 10 s before it kills them
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        if self.pg_admin_url:
            self._pg(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')

    def request(
        self, method: str, path: str, data=None, token: str | None = None, headers=None, base: str | None = None
    ) -> Response:
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request((base or self.url) + path, data=body, method=method)
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", token if token.startswith("Agent ") else f"Bearer {token}")
        for key, value in (headers or {}).items():
            req.add_header(key, value)
        try:
            with urllib.request.urlopen(req, timeout=30, context=self.ssl_context) as resp:
                return Response(resp.status, resp.read(), resp.headers)
        except urllib.error.HTTPError as err:
            return Response(err.code, err.read(), err.headers)

    def token(self, username: str, role: str) -> str:
        return self.manage("rmm_token", username, "--role", role, "--all-sites").stdout.strip()

    def agent(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "rmm_agent", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def enroll(self, site: str, hostname: str) -> tuple[Path, dict]:
        if os.geteuid() == 0:  # a root agent needs its run-as account, made by its install step
            done = self.agent(["install-account"])
            assert done.returncode == 0, done.stderr
        token = self.manage("rmm_enrollment_token", "--site", site).stdout.strip()
        state = self.tmp / f"agent-{hostname}"
        done = self.agent(
            [
                "enroll",
                "--server",
                self.url,
                "--token",
                token,
                "--state-dir",
                str(state),
                "--hostname",
                hostname,
                *self.enroll_args,
            ]
        )
        assert done.returncode == 0, done.stderr
        return state, json.loads((state / "config.json").read_text())
