"""``make prod-up`` / ``make prod-down``: the production layout of docs/operations.md on this machine,
from the repo's own files (deploy/), for an operator to try and for the end-to-end test.

Debian's nginx with the shipped site, the agent tier (two uvicorn workers), one daphne worker and
the task cluster, started with the command lines and settings of deploy/systemd's units (systemd
is not needed), the environment file made from deploy/rmm.env.example; the PostgreSQL and Redis
of ``DATABASE_URL`` and ``REDIS_URL``, or private ones in the state dir; a CA made for the
occasion. The state dir's ``state.json`` records every process started (each the leader of a
session of its own), so that ``down`` stops exactly those.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rmm.core.private_files import create_secret_key
from rmm.deploy import nginx
from rmm.deploy.processes import free_port, port_free, session_members, spawn, stop_session
from rmm.deploy.stores import PrivatePostgres, PrivateRedis
from rmm.deploy.tls import certificates, still_valid
from rmm.deploy.units import ROOT, Service, service

ENV_EXAMPLE = ROOT / "deploy" / "rmm.env.example"
AGENT_TIER_WORKERS = 2
DATABASE = "rmm"  # the private PostgreSQL's database


class LayoutError(Exception):
    """Why the layout cannot be brought up (or down) as asked."""


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines, as systemd's EnvironmentFile= reads them (comments and blanks skipped)."""
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def read_state(state_dir: Path) -> dict | None:
    path = state_dir / "state.json"
    return json.loads(path.read_text()) if path.exists() else None


def running(state: dict) -> dict[str, list[int]]:
    """Each recorded process that still runs: its name and the live pids of its session."""
    found = {entry["name"]: session_members(entry["pid"]) for entry in state["processes"]}
    return {name: pids for name, pids in found.items() if pids}


def up(state_dir: Path, port: int, say: Callable[[str], None]) -> dict:
    """Bring the layout up with its https port ``port`` (0: a free one); its state. Whatever was
    started is stopped again when a later step fails."""
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o711)  # noqa: S103 - the private PostgreSQL's account passes through to its own dir
    previous = read_state(state_dir)
    if previous and running(previous):
        raise LayoutError(f"the layout in {state_dir} is already up ({previous['url']}): make prod-down first")
    port = port or free_port()
    if not port_free(port):
        raise LayoutError(f"port {port} is in use: choose another with --port (0 picks a free one)")
    _ensure_nginx(say)
    state = {"url": f"https://127.0.0.1:{port}", "started": datetime.now(UTC).isoformat(), "processes": []}
    try:
        _bring_up(state_dir, port, state, say)
    except BaseException:
        say("Starting failed: stopping what was started.")
        down(state_dir, say)
        raise
    return state


def _save(state_dir: Path, state: dict) -> None:
    (state_dir / "state.json").write_text(json.dumps(state, indent=2) + "\n")


def _ensure_nginx(say: Callable[[str], None]) -> None:
    """Debian's nginx, installed where missing and allowed (as ``make install`` does)."""
    if not Path(nginx.NGINX).exists():
        say("Debian's nginx is missing.")
        subprocess.run(["sh", str(ROOT / "scripts" / "ensure-deb.sh"), nginx.NGINX, "nginx", "make prod-up"])
    if not Path(nginx.NGINX).exists():
        raise LayoutError("Debian's nginx is not installed: sudo apt-get install nginx")


def _bring_up(state_dir: Path, port: int, state: dict, say: Callable[[str], None]) -> None:
    logs, var = state_dir / "logs", state_dir / "var"
    logs.mkdir(exist_ok=True)

    def record(name: str, pid: int, **more) -> None:
        state["processes"].append({"name": name, "pid": pid, **more})
        _save(state_dir, state)

    tls = state_dir / "tls"
    if not still_valid(tls / "server.pem"):
        certificates(tls, valid=timedelta(days=90), name=f"rmm prod-up CA ({socket.gethostname()})")
    os.chmod(tls, 0o700)
    state["ca_file"] = str(tls / "ca.pem")

    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        try:
            pg = PrivatePostgres(state_dir / "postgres")
            pg.start()
        except subprocess.CalledProcessError as error:
            raise LayoutError(f"the private PostgreSQL did not start: {error.stderr or error.stdout}") from None
        record("postgresql", pg.pid(), port=pg.port, postgres=str(pg.dir), stop_timeout=30)
        _create_database(pg.url, DATABASE)
        database_url = pg.url.rsplit("/", 1)[0] + f"/{DATABASE}"
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        redis = PrivateRedis(state_dir / "redis")
        redis.start()
        record("redis", redis.proc.pid, port=redis.port, stop_timeout=10)
        redis_url = redis.url

    env_file = state_dir / "rmm.env"
    settings = _environment(var, port, database_url, redis_url)
    env_file.write_text(
        "# Made by `make prod-up` from deploy/rmm.env.example, for this machine (docs/operations.md).\n"
        + "".join(f"{key}={value}\n" for key, value in settings.items())
    )
    os.chmod(env_file, 0o600)
    state["env_file"] = str(env_file)
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", **settings}

    say("Migrating the database and collecting the static files…")
    for command in (["migrate", "--noinput"], ["collectstatic", "--noinput"]):
        with open(logs / "manage.log", "ab") as log:
            done = subprocess.run(
                [sys.executable, "manage.py", *command], cwd=ROOT, env=base, stdout=log, stderr=subprocess.STDOUT
            )
        if done.returncode:
            raise LayoutError(f"manage.py {command[0]} failed: see {logs / 'manage.log'}")

    agent_ports = [free_port() for _ in range(AGENT_TIER_WORKERS)]
    console_port = free_port()
    services = [service("rmm-agent-tier@.service", str(p)) for p in agent_ports]
    services += [service("rmm-daphne@.service", str(console_port)), service("rmm-qcluster.service")]
    for unit, worker_port in zip(services, [*agent_ports, console_port, None], strict=True):
        pid = _start(unit, base, logs)
        record(unit.name, pid, port=worker_port, stop_timeout=unit.stop_timeout, mixed=unit.mixed)
    for worker_port in [*agent_ports, console_port]:
        _wait_for(f"http://127.0.0.1:{worker_port}/healthz", None, logs)

    site = nginx.site(
        https_port=port,
        http_port=free_port(),
        agent_ports=agent_ports,
        console_port=console_port,
        cert=tls / "server.pem",
        key=tls / "server.key",
        blobs=Path(settings["RMM_EVIDENCE_ROOT"]),
    )
    proxy = nginx.Nginx(state_dir / "nginx", site)
    check = proxy.check()
    if check.returncode:
        raise LayoutError(f"nginx -t refused the site: {check.stderr}")
    proxy.start()
    record("nginx", proxy.proc.pid, stop_timeout=10)
    _wait_for(state["url"] + "/readyz", ssl.create_default_context(cafile=state["ca_file"]), logs)


def _environment(var: Path, port: int, database_url: str, redis_url: str) -> dict[str, str]:
    """deploy/rmm.env.example with this machine's values: the caller's own ``RMM_*`` settings
    (e.g. ``RMM_HEARTBEAT_INTERVAL``) over the example's, the layout's paths, names and stores over
    both."""
    values = read_env_file(ENV_EXAMPLE)
    values.update({key: value for key, value in os.environ.items() if key.startswith("RMM_")})
    values.update(
        RMM_VAR_DIR=str(var),
        RMM_SECRET_KEY=create_secret_key(var),
        RMM_ALLOWED_HOSTS="127.0.0.1",  # the server certificate's one name
        RMM_CSRF_TRUSTED_ORIGINS=f"https://127.0.0.1:{port}",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        RMM_EVIDENCE_ROOT=str(var / "evidence"),
        RMM_SIGNING_KEY_DIR=str(var / "keys" / "signing"),
    )
    return values


def _create_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def _start(unit: Service, base: dict[str, str], logs: Path) -> int:
    """The unit's process as systemd would start it: its environment file (``base``), then its own
    ``Environment=``; output to ``logs/<unit>.log``."""
    return spawn(unit.argv, cwd=unit.cwd, env={**base, **unit.environment}, log=logs / f"{unit.name}.log")


def _wait_for(url: str, context: ssl.SSLContext | None, logs: Path, timeout: float = 60) -> None:
    """Until ``url`` answers 200. A worker is asked as nginx does (RMM_HTTPS redirects plain http)."""
    request = urllib.request.Request(url, headers={"X-Forwarded-Proto": "https"})  # noqa: S310 - our own URL
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(request, timeout=2, context=context) as answer:  # noqa: S310 - our own URL
                if answer.status == 200:
                    return
        except OSError as error:
            if time.monotonic() > deadline:
                raise LayoutError(f"{url} did not answer 200 within {timeout:.0f} s ({error}): see {logs}") from None
        time.sleep(0.2)


def down(state_dir: Path, say: Callable[[str], None]) -> list[str]:
    """Stop every process ``up`` recorded in ``state_dir``, the last started first (nginx, the task
    cluster, the workers, then Redis and PostgreSQL): the names of those that had to be killed."""
    state = read_state(state_dir)
    if state is None:
        say(f"Nothing to stop: {state_dir} records no layout.")
        return []
    killed = []
    for entry in reversed(state["processes"]):
        if not session_members(entry["pid"]):
            continue
        if "postgres" in entry:  # PostgreSQL's own shutdown first, then whatever is left
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                PrivatePostgres(Path(entry["postgres"])).stop("fast")
        if stop_session(entry["pid"], entry["stop_timeout"], mixed=entry.get("mixed", False)):
            killed.append(entry["name"])
        say(f"  stopped {entry['name']} (pid {entry['pid']})")
    left = running(state)
    if left:
        raise LayoutError(f"still running after SIGKILL: {left}")
    (state_dir / "state.json").unlink()
    return killed
