"""The server under test, started the way the README's production section says.

Its own PostgreSQL database (created and dropped here), its own Redis database, an agent tier of
ASGI workers (uvicorn, or daphne; one port each, as behind a proxy), a daphne worker for the REST
API and ``manage.py qcluster``, all on 127.0.0.1; with ``proxy="nginx"``, Debian's nginx in front
of them running the shipped site (deploy/nginx/rmm.conf) with TLS, its agent tier's upstream the
workers' ports, and a CA made for the run.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from rmm.deploy.nginx import Nginx, site
from rmm.deploy.tls import certificates

ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ACCESS_STATUS = re.compile(r'" (\d{3}) ')  # Debian's log format: "request line" status bytes
# nginx's error log: "… *<connection> <what> while <when>, client: …"
UPSTREAM_ERROR = re.compile(r"\*\d+ (.*?) while ([^,]*)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def status_mib(pid: int, field: str) -> float:
    """One memory figure of a process from /proc (``VmHWM``: its peak resident memory, ``VmRSS``:
    resident now), in MiB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss_mib(pid: int) -> float:
    return status_mib(pid, "VmHWM")


def tree(pid: int) -> list[int]:
    """A process and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def pids_named(name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def start_proxy(tmp: Path, agent_ports: list[int], console_port: int, agents: int) -> tuple[Nginx, str, int]:
    """The shipped site in front of the workers, started: the agent tier's upstream
    ``agent_ports``, the console's ``console_port``; TLS with a certificate from a CA made for
    the run in ``tmp``. Returns nginx, the CA file the agents trust and the https port."""
    ca, cert, key = certificates(tmp)
    port = free_port()
    text = site(
        https_port=port,
        http_port=free_port(),
        agent_ports=agent_ports,
        console_port=console_port,
        cert=cert,
        key=key,
        blobs=tmp / "var" / "evidence",
    )
    # Each held heartbeat holds two connections (the agent's and nginx's to its worker), and
    # nginx's workers do not share them out evenly: room for all of them in each worker, as far
    # as this process's limit on open files allows (nginx inherits it).
    files = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    files = 1 << 20 if files == resource.RLIM_INFINITY else files
    connections = min(max(768, 2 * agents + 1024), files - 1024)
    return Nginx(tmp / "nginx", text, connections=connections).start(), str(ca), port


def proxy_answers(nginx: Nginx) -> dict:
    """What nginx answered, by status, from its access log; and its error log's upstream errors
    (a worker that refused, reset or timed out a connection) by kind."""
    statuses: dict[str, int] = {}
    with open(nginx.prefix / "access.log", errors="replace") as log:
        for line in log:
            found = ACCESS_STATUS.search(line)
            if found:
                statuses[found.group(1)] = statuses.get(found.group(1), 0) + 1
    upstream: dict[str, int] = {}
    for line in (nginx.prefix / "error.log").read_text(errors="replace").splitlines():
        if "upstream" in line:
            found = UPSTREAM_ERROR.search(line)
            kind = f"{found.group(1)} ({found.group(2)})" if found else line[-80:]
            upstream[kind] = upstream.get(kind, 0) + 1
    return {"statuses": dict(sorted(statuses.items())), "upstream_errors": upstream}


@dataclass
class Cluster:
    """The README's production layout on a fresh database: an agent tier of ``workers`` ASGI
    processes, ``api_workers`` daphne processes for the console and the REST API (0: the agent
    tier serves the API too), and one task cluster."""

    workers: int = 2
    api_workers: int = 1
    interval: int = 30
    server: str = "uvicorn"  # the agent tier (httptools, uvloop); or "daphne"
    proxy: str = ""  # "nginx": the agents call the workers through it, over https
    agents: int = 0  # how many agents will call at once (nginx's connections per worker follow)
    pg_url: str = "postgres://postgres@127.0.0.1:5432"
    redis_url: str = "redis://127.0.0.1:6379/11"
    extra_env: dict = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    ports: list[int] = field(default_factory=list)
    api_ports: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="rmm-bench-"))
        self.dbname = f"rmm_bench_{uuid.uuid4().hex[:8]}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "RMM_"))}
        self.env.update(
            DJANGO_SETTINGS_MODULE="bench.settings",
            DATABASE_URL=f"{self.pg_url}/{self.dbname}",
            REDIS_URL=self.redis_url,
            RMM_VAR_DIR=str(self.tmp / "var"),
            RMM_HEARTBEAT_INTERVAL=str(self.interval),
            RMM_API_RATE="1000000/min",
            PYTHONUNBUFFERED="1",
            **self.extra_env,
        )
        self.log = open(self.tmp / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        self.nginx: Nginx | None = None
        self.ca: str | None = None  # the CA the agents trust, with a proxy
        self.proxy_port = 0

    @property
    def urls(self) -> list[str]:
        """Each agent-tier worker, straight."""
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    @property
    def agent_urls(self) -> list[str]:
        """Where the agents call: the proxy, or each worker."""
        return [f"https://127.0.0.1:{self.proxy_port}"] if self.nginx else self.urls

    @property
    def api_urls(self) -> list[str]:
        """Where the PSA's calls go: the API tier, or the agent tier when there is none."""
        return [f"http://127.0.0.1:{port}" for port in self.api_ports] or self.urls

    def _pg(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"{self.pg_url}/postgres", autocommit=True) as conn:
            conn.execute(sql)

    def _redis_flush(self) -> None:
        import redis

        redis.Redis.from_url(self.redis_url).flushdb()

    def manage(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        return done.stdout

    def shell(self, code: str) -> dict:
        """Run Django code in a ``manage.py shell``; it prints one JSON line, which is returned."""
        return json.loads(self.manage("shell", "--verbosity", "0", "-c", code).strip().splitlines()[-1])

    def start(self) -> Cluster:
        self._pg(f'CREATE DATABASE "{self.dbname}"')
        self._redis_flush()
        self.manage("migrate", "--noinput", "-v", "0")
        # One signing key for every worker, made before any of them starts (README: Keys).
        self.shell("import json; from rmm.keys import keyset; print(json.dumps(keyset.current().version))")
        for n in range(self.workers):
            port = free_port()
            self.ports.append(port)
            self.procs[f"worker-{n + 1}"] = subprocess.Popen(
                self._server_command(port, n + 1),
                cwd=ROOT,
                env=self.env,
                stdout=self.log,
                stderr=subprocess.STDOUT,
            )
        for n in range(self.api_workers):
            port = free_port()
            self.api_ports.append(port)
            self.procs[f"api-{n + 1}"] = subprocess.Popen(
                self._daphne(port, f"api-{n + 1}"), cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT
            )
        self.procs["qcluster"] = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for url in dict.fromkeys(self.urls + self.api_urls):
            self._wait_ready(url)
        if self.proxy == "nginx":
            self._start_nginx()
        return self

    def _start_nginx(self) -> None:
        ports = self.api_ports or self.ports
        self.nginx, self.ca, self.proxy_port = start_proxy(self.tmp, self.ports, ports[0], self.agents)

    def proxy_answers(self) -> dict:
        return proxy_answers(self.nginx) if self.nginx else {}

    def _server_command(self, port: int, n: int) -> list[str]:
        """The README's agent-tier uvicorn command, or its daphne command (with its access log)."""
        if self.server == "uvicorn":
            listen = ["--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--timeout-keep-alive", "75"]
            return [sys.executable, "-m", "uvicorn", *listen, "rmm.asgi:application"]
        return self._daphne(port, str(n))

    def _daphne(self, port: int, name: str) -> list[str]:
        access = ["--access-log", str(self.tmp / f"access-{name}.log")]
        return [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), *access, "rmm.asgi:application"]

    def _wait_ready(self, url: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited:\n{(self.tmp / 'server.log').read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url + "/api/v1/agent/bench/stats/", timeout=2).read()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{url} did not start")

    def stats(self, reset: bool = False, api: bool = False) -> list[dict]:
        """Each agent-tier worker's own figures (query counts per endpoint, collector pauses), and
        the API tier's too with ``api``; a reset resets both."""
        found = []
        for url in dict.fromkeys(self.urls + (self.api_urls if api or reset else [])):
            request = urllib.request.Request(
                url + "/api/v1/agent/bench/stats/", method="POST" if reset else "GET", data=b"" if reset else None
            )
            # A worker behind on its calls (a busy machine) answers late: wait rather than lose the run.
            with urllib.request.urlopen(request, timeout=180) as answer:
                found.append(json.loads(answer.read()))
        return found

    def database_seconds(self) -> float:
        """Time PostgreSQL spent running statements in this run's database so far (its
        ``pg_stat_database.active_time``): the database's share alone, whatever else the server
        runs for others."""
        import psycopg

        with psycopg.connect(self.env["DATABASE_URL"], autocommit=True) as conn:
            row = conn.execute("SELECT active_time FROM pg_stat_database WHERE datname = current_database()")
            return float(row.fetchone()[0]) / 1000

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: each worker, the task cluster (all its processes), PostgreSQL, Redis."""
        figures = {name: cpu_seconds(proc.pid) for name, proc in self.procs.items() if name != "qcluster"}
        figures["qcluster"] = sum(cpu_seconds(pid) for pid in tree(self.procs["qcluster"].pid))
        figures["postgres"] = sum(cpu_seconds(pid) for pid in pids_named("postgres"))
        figures["redis"] = sum(cpu_seconds(pid) for pid in pids_named("redis-server"))
        if self.nginx and self.nginx.proc:
            figures["nginx"] = sum(cpu_seconds(pid) for pid in tree(self.nginx.proc.pid))
        return figures

    def memory(self) -> dict[str, float]:
        """Peak resident memory (MiB) of each server process; the task cluster's largest process."""
        figures = {name: peak_rss_mib(proc.pid) for name, proc in self.procs.items() if name != "qcluster"}
        figures["qcluster"] = max(peak_rss_mib(pid) for pid in tree(self.procs["qcluster"].pid))
        if self.nginx and self.nginx.proc:
            figures["nginx"] = sum(peak_rss_mib(pid) for pid in tree(self.nginx.proc.pid))
        return figures

    def stop(self) -> None:
        if self.nginx:
            self.nginx.stop()
        for name, proc in self.procs.items():
            if proc.poll() is None:
                if name == "qcluster":
                    os.killpg(proc.pid, signal.SIGTERM)
                else:
                    proc.terminate()
        for name, proc in self.procs.items():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                if name == "qcluster":
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
                proc.wait(5)
        self.log.close()
        self._pg(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')
        self._redis_flush()
        # its logs, keys and evidence blobs: of no use once its database is gone (hundreds of MB)
        shutil.rmtree(self.tmp, ignore_errors=True)
