"""`make prod-up`'s layout end to end (rmm/deploy/layout.py): deploy/'s nginx site and systemd
units' processes on this machine, with a CA made for the occasion. The real agent enrolls over
https with the CA pinned and runs a job through the agent tier while the console's websocket hears
it through nginx; an evidence export is sent by nginx through X-Accel-Redirect; an agent that does
not trust the certificate is refused; `make prod-down` leaves no process behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from websockets.sync.client import connect

from rmm.deploy.layout import read_env_file
from rmm.deploy.nginx import NGINX
from rmm.deploy.processes import session_members
from rmm.deploy.tls import certificates
from rmm.deploy.units import service
from tests.e2e.flows import Session, console_users, finished_export, make_world, publish, run_job
from tests.e2e.server import ROOT, Server
from tests.e2e.test_console_live import events_until
from tests.support.debian import require

PASSWORD = "correct horse battery staple"
PROD = [sys.executable, "manage.py", "rmm_prod"]  # what `make prod-up` and `make prod-down` run


class Layout(Server):
    """The running layout seen as tests/e2e's Server: ``manage.py`` and the agent with its
    environment file, requests through nginx trusting its CA alone."""

    def __init__(self, state_dir: Path, caller_env: dict[str, str]):
        self.tmp, self.state = state_dir, json.loads((state_dir / "state.json").read_text())
        self.url, self.ca = self.state["url"], self.state["ca_file"]
        self.env = {**caller_env, **read_env_file(Path(self.state["env_file"]))}
        self.ssl_context = ssl.create_default_context(cafile=self.ca)
        self.enroll_args = ("--ca-file", self.ca)
        self.pg_admin_url = self.proc = self.cluster = None

    def process(self, prefix: str) -> dict:
        return next(p for p in self.state["processes"] if p["name"].startswith(prefix))

    def diagnostics(self) -> str:
        logs = sorted((self.tmp / "logs").glob("*.log")) + [self.tmp / "nginx" / "error.log"]
        return "\n".join(f"=== {log.name} ===\n{log.read_text(errors='replace')[-3000:]}" for log in logs)

    def leftovers(self) -> list[int]:
        """Processes with the layout's state dir in their environment (every server process) or
        command line (nginx's master, PostgreSQL's)."""
        found = set(super().leftovers())
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if str(self.tmp).encode() in (entry / "cmdline").read_bytes():
                        found.add(int(entry.name))
        return sorted(found - {os.getpid()})


@pytest.fixture(scope="module")
def server():
    """`make prod-up` in a state dir of its own (on a database of its own in the PostgreSQL leg,
    otherwise with its private PostgreSQL and Redis); brought down again whatever happens."""
    require(NGINX, "nginx")
    # Not under pytest's tmp (0700): as root, the private PostgreSQL's account must reach its dir.
    state_dir = Path(tempfile.mkdtemp(prefix="rmm-prod-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "RMM_"))}
    env.update(
        RMM_HEARTBEAT_INTERVAL="2",
        RMM_HEARTBEAT_MIN_SPACING_SECONDS="0",
        RMM_API_RATE="100000/min",
        RMM_TASK_QUEUE=f"rmm-prod-{uuid.uuid4().hex[:10]}",  # the CI's Redis is shared with other servers
    )
    database = None
    if env.get("DATABASE_URL", "").startswith("postgres"):
        import psycopg

        admin, database = env["DATABASE_URL"].rsplit("/", 1)[0], f"rmm_prod_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(f"{admin}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        env["DATABASE_URL"] = f"{admin}/{database}"
    try:
        up = subprocess.run(
            [*PROD, "up", "--state-dir", str(state_dir), "--port", "0"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert up.returncode == 0, up.stdout + up.stderr
        layout = Layout(state_dir, env)
        layout.up_output = up.stdout
        yield layout
    finally:
        subprocess.run([*PROD, "down", "--state-dir", str(state_dir)], cwd=ROOT, env=env, timeout=300)
        if database:
            with psycopg.connect(f"{admin}/postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        shutil.rmtree(state_dir, ignore_errors=True)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, waiting for an init that may never reap it, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def fetch(url: str, ca, token: str | None = None) -> tuple[int, dict, bytes]:
    """GET over https trusting ``ca`` alone: (status, headers, body)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30, context=ssl.create_default_context(cafile=ca)) as answer:  # noqa: S310
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_the_layout_runs_the_units_command_lines_behind_nginx(server):
    """Every process of deploy/systemd runs with its unit's command line; the console and the CA to
    pin are printed; a second `prod-up` is refused while the first runs."""
    assert f"Console: {server.url}/console/" in server.up_output
    assert f"The CA to pin: {server.ca}" in server.up_output
    names = [p["name"] for p in server.state["processes"]]
    assert [n.split("@")[0] for n in names if n.startswith("rmm-")] == [
        "rmm-agent-tier",
        "rmm-agent-tier",
        "rmm-daphne",
        "rmm-qcluster",
    ]
    assert names[-1] == "nginx"
    for entry in server.state["processes"]:
        if entry["name"].startswith("rmm-"):
            unit, _, instance = entry["name"].partition("@")
            expected = service(f"{unit}@.service" if instance else f"{unit}.service", instance or None)
            cmdline = Path(f"/proc/{entry['pid']}/cmdline").read_bytes().decode().split("\0")[:-1]
            assert cmdline[-len(expected.argv) :] == expected.argv, (entry, cmdline)  # after a script's interpreter
    assert fetch(server.url + "/readyz", server.ca)[0] == 200
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(server.url + "/readyz", timeout=10)  # noqa: S310 - the system's trust store
    again = subprocess.run(
        [*PROD, "up", "--state-dir", str(server.tmp), "--port", "0"],
        cwd=ROOT,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 1 and "is already up" in again.stderr, again.stdout + again.stderr


@pytest.fixture(scope="module")
def world(server, tmp_path_factory):
    """A site with approved authority, and a real agent enrolled through nginx with the CA pinned,
    after an agent that did not pin it was refused."""
    w = make_world(server)
    state = tmp_path_factory.mktemp("agents") / f"tls-{uuid.uuid4().hex[:6]}"
    token = server.manage("rmm_enrollment_token", "--site", w["site"]).stdout.strip()
    refused = server.agent(["enroll", "--server", server.url, "--token", token, "--state-dir", str(state)])
    assert refused.returncode == 1
    assert "the server's certificate is not trusted" in refused.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in refused.stderr and not state.exists()
    config = json.loads((w["state"] / "config.json").read_text())
    assert (config["server"], config["ca_file"]) == (server.url, str(w["state"] / "ca.pem"))
    return w


def console_session(server, w) -> Session:
    """A technician of the world's site, signed in to the console through nginx (over https the
    sign-in form's POST carries its Referer, as browsers send it)."""
    username = f"tech-{uuid.uuid4().hex[:6]}"
    console_users(server, {username: ("technician", [w["site"]])}, PASSWORD)
    session = Session(SimpleNamespace(url=server.url))
    session.opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(session.jar), urllib.request.HTTPSHandler(context=server.ssl_context)
    )
    session.opener.addheaders = [("Referer", f"{server.url}/accounts/login/")]
    return session.login(username, PASSWORD)


def test_a_job_runs_over_https_while_the_console_hears_it_through_nginx(server, world):
    session = console_session(server, world)
    ws_url = server.url.replace("https://", "wss://") + "/ws/console/"
    headers = {"Cookie": session.cookie_header}
    with connect(ws_url, ssl=server.ssl_context, additional_headers=headers, origin=server.url, open_timeout=5) as ws:
        script = publish(server, world, "echo through nginx\n")
        job = run_job(server, world, script["id"])
        ran = server.agent(["run", "--state-dir", str(world["state"]), "--once"])
        assert ran.returncode == 0, ran.stderr
        heard = events_until(ws, lambda e: e.get("id") == job["id"] and e.get("status") == "succeeded")
    assert [e["status"] for e in heard if e.get("type") == "job" and e["id"] == job["id"]] == [
        "queued",
        "running",
        "succeeded",
    ]
    job = server.request("GET", f"/api/v1/script-jobs/{job['id']}/", token=world["psa"]).json()
    assert (job["status"], job["result"]["stdout"]) == ("succeeded", "through nginx\n"), job


def test_an_evidence_export_is_sent_by_nginx(server, world):
    """The daphne worker checks and records the download and answers X-Accel-Redirect; nginx sends
    the bytes from the blob store, with the bundle's hash, and never serves /_blobs/ from outside."""
    compliance = server.token(f"comp-{uuid.uuid4().hex[:6]}", "compliance")
    r = server.request("POST", "/api/v1/evidence/exports/", {"site": world["site"]}, compliance)
    assert r.status == 202, r.body
    status = finished_export(server, r.json()["id"], compliance)
    assert status["status"] == "done", status
    worker = f"http://127.0.0.1:{server.process('rmm-daphne')['port']}"
    answer = server.request(
        "GET", status["download"], token=compliance, headers={"X-Forwarded-Proto": "https"}, base=worker
    )
    assert (answer.status, answer.body) == (200, b"") and answer.headers["X-Accel-Redirect"].startswith("/_blobs/")
    code, headers, body = fetch(server.url + status["download"], server.ca, compliance)
    assert (code, headers["Content-Type"]) == (200, "application/zip")
    assert headers["Content-Disposition"] == f'attachment; filename="rmm-evidence-{status["id"]}.zip"'
    assert hashlib.sha256(body).hexdigest() == headers["X-Content-SHA256"] == status["file_hash"]
    assert fetch(server.url + answer.headers["X-Accel-Redirect"], server.ca)[0] == 404  # internal only


def test_an_agent_whose_pinned_ca_did_not_issue_the_certificate_is_refused(server, world, tmp_path):
    other_ca, _cert, _key = certificates(tmp_path)
    (world["state"] / "ca.pem").write_bytes(other_ca.read_bytes())
    refused = server.agent(["run", "--state-dir", str(world["state"]), "--once"])
    assert refused.returncode == 1
    assert "the server's certificate is not trusted" in refused.stderr


def test_prod_down_stops_every_process_it_started(server):
    """Every process of the layout, the workers the task cluster forked and PostgreSQL's backends
    included, is gone; nothing listens on its ports any more."""
    started = {pid for entry in server.state["processes"] for pid in session_members(entry["pid"])}
    workers = {p["pid"] for p in server.state["processes"] if p["name"].startswith("rmm-")}
    assert len(started) > len(server.state["processes"]) and workers <= set(server.leftovers()) <= started
    ports = [urllib.parse.urlsplit(server.url).port] + [p["port"] for p in server.state["processes"] if p.get("port")]
    down = subprocess.run(
        [*PROD, "down", "--state-dir", str(server.tmp)], cwd=ROOT, env=server.env, capture_output=True, text=True
    )
    assert down.returncode == 0, down.stdout + down.stderr
    assert "is down" in down.stdout and "Killed" not in down.stdout, down.stdout
    assert server.leftovers() == []
    assert [pid for pid in started if alive(pid)] == []
    for port in ports:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"
    again = subprocess.run(
        [*PROD, "down", "--state-dir", str(server.tmp)], cwd=ROOT, env=server.env, capture_output=True, text=True
    )
    assert again.returncode == 0 and "Nothing to stop" in again.stdout
