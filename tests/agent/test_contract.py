"""The agent protocol's contract: the same behaviours of the real agent, checked against the
hand-written FakeServer (tests/agent/conftest.py) and against the real server (a subprocess on a
free port, tests/e2e/server.py). The agent tests rely on FakeServer; this suite keeps it honest:
where the two disagree, the real server is right and FakeServer is fixed.

Each test takes ``agent_server``, an adapter with one small interface over either server. The
"real" parameter is slow (a migrated database, ASGI servers and a task cluster per test
session), so ``make test-fast`` runs the fake half only. The suite lives here, beside FakeServer
and the agent tests it guards; the real server is started with the e2e tests' ``Server``. Every
subprocess and every wait has a timeout: a hang fails the test instead of blocking the run.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import select
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rmm_agent.agent import EXIT_UNAUTHORIZED
from rmm_agent.protocol import MAX_BODY_BYTES, decode_stream
from rmm_agent.results import make_result

from .conftest import AGENT_CMD, REPO_ROOT, TOKEN, FakeServer, _serve, agent_env, make_payload, sign

MIB = 1024 * 1024
AGENT_TIMEOUT = 90  # seconds any one agent command may take
WAIT = 30  # seconds any one condition may take to become true


@dataclass
class Stored:
    """A result as the server keeps it, the same shape whichever server it is."""

    outcome: str
    exit_code: int | None
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    hash: str
    content_sha256: str  # of the instruction the server signed and recorded with the result


def wait_for(condition, what: str, timeout: float = WAIT):
    """``condition()``'s first truthy value, polled; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.2)


def post(url: str, path: str, body: dict, authorization: str | None = None) -> tuple[int, dict, Message]:
    """(status, JSON answer, headers: looked up without regard to case) of one agent-protocol call."""
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    if authorization:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as answer:
            return answer.status, json.loads(answer.read()), answer.headers
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers


def unescape(text: str, escaped: bool) -> bytes:
    """A stored stream's exact bytes (the reversal docs/evidence.md documents)."""
    data = text.encode("utf-8")
    if not escaped:
        return data
    return re.sub(
        rb"\\(\\|x([0-9a-f]{2}))", lambda m: bytes.fromhex(m.group(2).decode()) if m.group(2) else b"\\", data
    )


class FakeAdapter:
    """FakeServer behind the contract's interface: instructions are signed here and queued."""

    def __init__(self, fake: FakeServer, key: Ed25519PrivateKey) -> None:
        self.fake, self.key = fake, key
        self.url = fake.url
        self.hostname = "contract-host"
        self.payloads: dict[str, dict] = {}

    def enrollment_token(self) -> str:
        return TOKEN

    def queue_script(self, content: str) -> str:
        payload = make_payload(content, timeout_seconds=120)
        with self.fake.lock:
            self.fake.pending.append(sign(payload, self.key))
        self.payloads[payload["instruction_id"]] = payload
        return payload["instruction_id"]

    def is_running(self, handle: str) -> bool:
        beats = self.fake.heartbeats()
        return bool(beats) and handle in beats[-1].get("running", [])

    def abort(self, handle: str) -> None:
        with self.fake.lock:
            self.fake.abort.append(handle)

    def rotate(self, agent_id: str) -> None:
        with self.fake.lock:
            self.fake.rotate = True

    def result(self, handle: str) -> Stored | None:
        with self.fake.lock:
            body = self.fake.results.get(handle)
        if body is None:
            return None
        return Stored(
            outcome=body["outcome"],
            exit_code=body["exit_code"],
            stdout=decode_stream(body["stdout"], body.get("stdout_encoding")),
            stderr=decode_stream(body["stderr"], body.get("stderr_encoding")),
            stdout_truncated=body["stdout_truncated"],
            hash=body["hash"],
            content_sha256=self.payloads[handle]["content_sha256"],
        )

    def close(self) -> None:
        pass


class RealAdapter:
    """The real server behind the contract's interface, driven as its users drive it: the
    enrollment-token command, a PSA's authority, a technician's script and job, an approver,
    an admin's rotation, a kill switch to abort. A site of its own per test. The agent calls a
    uvicorn worker (the agent tier, docs/performance.md); people call the daphne one."""

    def __init__(self, server) -> None:
        self.server = server
        self.url = server.second_worker("uvicorn")  # agents call the uvicorn tier, as in production
        tag = uuid.uuid4().hex[:8]
        self.site, self.hostname = f"contract-{tag}", f"contract-{tag}"
        self.world: dict | None = None
        self.switches: list[str] = []

    def enrollment_token(self) -> str:
        return self.server.manage("rmm_enrollment_token", "--site", self.site).stdout.strip()

    def _world(self) -> dict:
        """Staff tokens, approved authority on the site, and the enrolled asset (made once)."""
        if self.world is None:
            from tests.e2e.flows import staff

            people = staff(self.server)
            self.server.manage("rmm_site_policy", self.site, "--allow-self-authorized-jobs")
            case_id, task_id = str(uuid.uuid4()), str(uuid.uuid4())
            r = self.server.request(
                "PUT",
                f"/api/v1/psa/cases/{case_id}/",
                {"title": "t", "status": "approved", "site": self.site},
                people["psa"],
            )
            assert r.status == 201, r.body
            r = self.server.request(
                "PUT",
                f"/api/v1/psa/tasks/{task_id}/",
                {"case": case_id, "title": "t", "status": "approved"},
                people["psa"],
            )
            assert r.status == 201, r.body
            assets = self.server.request(
                "GET", f"/api/v1/assets/?hostname={self.hostname}", token=people["tech"]
            ).json()["results"]
            assert len(assets) == 1, assets
            self.world = {**people, "asset": assets[0]["id"], "task": task_id}
        return self.world

    def queue_script(self, content: str) -> str:
        from tests.e2e.flows import publish, run_job

        w = self._world()
        return run_job(self.server, w, publish(self.server, w, content)["id"])["id"]

    def _job(self, handle: str) -> dict:
        return self.server.request("GET", f"/api/v1/script-jobs/{handle}/", token=self._world()["psa"]).json()

    def is_running(self, handle: str) -> bool:
        return self._job(handle)["status"] == "running"

    def abort(self, handle: str) -> None:
        w = self._world()
        r = self.server.request(
            "POST", "/api/v1/kill-switches/", {"scope": "asset", "target": w["asset"], "reason": "contract"}, w["tech"]
        )
        assert r.status == 201, r.body
        self.switches.append(r.json()["id"])

    def rotate(self, agent_id: str) -> None:
        from tests.e2e.flows import tokens

        [admin] = tokens(self.server, {f"admin-{uuid.uuid4().hex[:6]}": "admin"})
        r = self.server.request("POST", f"/api/v1/agents/{agent_id}/rotate/", token=admin)
        assert r.status == 200, r.body

    def result(self, handle: str) -> Stored | None:
        job = self._job(handle)
        if job["status"] in ("queued", "running", "awaiting_approval") or not job["evidence"]:
            return None
        psa = self._world()["psa"]
        document = self.server.request("GET", f"/api/v1/evidence/{job['evidence'][0]}/content/", token=psa).json()
        result = document["result"]
        return Stored(
            outcome=result["outcome"],
            exit_code=result["exit_code"],
            stdout=unescape(result["stdout"], result["stdout_escaped"]),
            stderr=unescape(result["stderr"], result["stderr_escaped"]),
            stdout_truncated=result["stdout_truncated"],
            hash=result["hash"],
            content_sha256=document["instruction"]["content_sha256"],
        )

    def close(self) -> None:
        for switch in self.switches:
            self.server.request(
                "POST",
                f"/api/v1/kill-switches/{switch}/release/",
                {"reason": "contract done"},
                self._world()["approver"],
            )


@pytest.fixture(scope="session")
def real_server(tmp_path_factory):
    """One real server for the session's "real" contract tests (started only if one runs)."""
    from tests.e2e.server import Server

    server = Server(tmp_path_factory.mktemp("contract"))
    try:
        server.start()  # migrate (120 s at most), then the server answers within 60 s or this fails
    except BaseException:
        server.stop()
        raise
    yield server
    server.stop()


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.slow)])
def agent_server(request, server_key: Ed25519PrivateKey):
    """The server under contract: FakeServer, or the real one."""
    if request.param == "fake":
        fake = FakeServer(private_key=server_key)
        httpd = _serve(fake)
        adapter = FakeAdapter(fake, server_key)
        yield adapter
        httpd.shutdown()
        httpd.server_close()
    else:
        adapter = RealAdapter(request.getfixturevalue("real_server"))
        yield adapter
        adapter.close()


def agent(*args: str, timeout: float = AGENT_TIMEOUT) -> subprocess.CompletedProcess:
    """The real agent, as a subprocess that must end within ``timeout`` seconds."""
    return subprocess.run(
        [*AGENT_CMD, *args],
        cwd=REPO_ROOT,
        env=agent_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def enroll(server, state: Path) -> dict:
    """Enroll the real agent with a fresh token of ``server``; its config."""
    done = agent(
        "enroll",
        "--server",
        server.url,
        "--token",
        server.enrollment_token(),
        "--state-dir",
        str(state),
        "--hostname",
        server.hostname,
    )
    assert done.returncode == 0, done.stderr
    config = json.loads((state / "config.json").read_text())
    assert done.stdout.strip() == config["agent_id"]
    return config


def run_once(state: Path) -> subprocess.CompletedProcess:
    done = agent("run", "--state-dir", str(state), "--once")
    assert done.returncode == 0, done.stderr
    return done


def credential(config: dict, secret: str | None = None) -> str:
    return f"Agent {config['agent_id']}:{secret or config['secret']}"


def heartbeat(server, config: dict, secret: str | None = None) -> tuple[int, dict, Message]:
    body = {"agent_version": "contract", "running": [], "capacity": 1}
    return post(server.url, "/api/v1/agent/heartbeat/", body, credential(config, secret))


def stored(server, handle: str) -> Stored:
    return wait_for(lambda: server.result(handle), "the result stored")


def test_enrollment_gives_an_identity_and_the_signing_keys(agent_server, tmp_path):
    config = enroll(agent_server, tmp_path / "agent")
    assert uuid.UUID(config["agent_id"]) and uuid.UUID(str(config["asset_id"]))
    assert config["secret"] and config["server_keys"]
    assert config["heartbeat_interval"] >= 1

    refused = agent(
        "enroll", "--server", agent_server.url, "--token", "enr_not-a-token", "--state-dir", str(tmp_path / "other")
    )
    assert refused.returncode == 2
    assert "enrollment refused (HTTP 403): Enrollment refused: unknown enrollment token." in refused.stderr
    assert not (tmp_path / "other" / "config.json").exists()


def test_a_heartbeat_with_no_work_answers_nothing_to_do(agent_server, tmp_path):
    state = tmp_path / "agent"
    config = enroll(agent_server, state)
    done = run_once(state)
    assert " ran " not in done.stderr
    status, answer, _ = heartbeat(agent_server, config)
    assert status == 200, answer
    assert answer["instructions"] == [] and answer["abort"] == []
    assert answer["facts_required"] is False
    assert isinstance(answer["interval"], int)
    assert "new_secret" not in answer


def test_a_leased_script_runs_and_its_result_is_stored(agent_server, tmp_path):
    state = tmp_path / "agent"
    enroll(agent_server, state)
    content = "echo out\necho err >&2\nexit 3\n"
    handle = agent_server.queue_script(content)
    done = run_once(state)
    assert "exit=3" in done.stderr
    result = stored(agent_server, handle)
    assert (result.outcome, result.exit_code) == ("completed", 3)
    assert (result.stdout, result.stderr) == (b"out\n", b"err\n")
    assert result.content_sha256 == hashlib.sha256(content.encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", result.hash)
    assert not list((state / "spool").glob("*.json"))


def test_a_running_script_is_aborted_by_the_server(agent_server, tmp_path):
    state = tmp_path / "agent"
    enroll(agent_server, state)
    handle = agent_server.queue_script("echo started\nsleep 120\necho never\n")
    log = open(tmp_path / "agent.log", "wb")  # noqa: SIM115 - closed below
    loop = subprocess.Popen(
        [*AGENT_CMD, "run", "--state-dir", str(state)], cwd=REPO_ROOT, env=agent_env(), stdout=log, stderr=log
    )
    try:
        wait_for(lambda: agent_server.is_running(handle), "the script running")
        time.sleep(0.5)  # it has printed its first line
        agent_server.abort(handle)
        result = stored(agent_server, handle)
        assert loop.poll() is None, "the agent keeps running"
    finally:
        loop.terminate()
        try:
            loop.wait(timeout=WAIT)
        finally:
            if loop.poll() is None:
                loop.kill()
                loop.wait(timeout=WAIT)
            log.close()
    assert (result.outcome, result.exit_code) == ("aborted", None), (tmp_path / "agent.log").read_text()
    assert result.stdout == b"started\n"


def test_an_unknown_or_wrong_credential_is_refused(agent_server, tmp_path):
    state = tmp_path / "agent"
    config = enroll(agent_server, state)
    for claimed in (credential({"agent_id": str(uuid.uuid4()), "secret": "x"}), credential(config, "wrong")):
        status, answer, headers = post(
            agent_server.url, "/api/v1/agent/heartbeat/", {"running": [], "capacity": 1}, claimed
        )
        assert status == 401
        assert answer == {"detail": "Agent credential missing, wrong or revoked."}
        assert headers.get("WWW-Authenticate") == "Agent"
    status, _, _ = post(agent_server.url, "/api/v1/agent/heartbeat/", {"running": [], "capacity": 1})
    assert status == 401

    config["secret"] = "wrong"
    (state / "config.json").write_text(json.dumps(config))
    done = agent("run", "--state-dir", str(state), "--once")
    assert done.returncode == EXIT_UNAUTHORIZED, done.stderr
    assert "server rejected this agent (HTTP 401" in done.stderr


def test_a_rotated_secret_is_taken_and_the_old_one_then_refused(agent_server, tmp_path):
    state = tmp_path / "agent"
    config = enroll(agent_server, state)
    agent_server.rotate(config["agent_id"])
    handle = agent_server.queue_script("echo across the rotation\n")
    done = run_once(state)
    assert "agent secret rotated" in done.stderr
    new = json.loads((state / "config.json").read_text())["secret"]
    assert new != config["secret"]
    assert stored(agent_server, handle).stdout == b"across the rotation\n"  # delivered with the new secret

    status, answer, _ = heartbeat(agent_server, config, new)
    assert status == 200 and "new_secret" not in answer
    assert heartbeat(agent_server, config)[0] == 401  # the old secret
    run_once(state)


def test_a_large_result_arrives_whole(agent_server, tmp_path):
    """Issue 11, defect 3: a megabyte of newlines on each stream (JSON escaping makes it larger)."""
    state = tmp_path / "agent"
    enroll(agent_server, state)
    handle = agent_server.queue_script(
        f"head -c {MIB} /dev/zero | tr '\\000' '\\n'\nhead -c {MIB} /dev/zero | tr '\\000' '\\n' >&2\n"
    )
    run_once(state)
    result = stored(agent_server, handle)
    assert result.stdout == b"\n" * MIB and result.stderr == b"\n" * MIB
    assert result.stdout_truncated is False
    assert not list((state / "spool").glob("*.json")), "the result is still waiting in the spool"


def test_a_nul_byte_in_the_output_is_stored(agent_server, tmp_path):
    """Issue 11, defect 4: the exact bytes, NUL included."""
    state = tmp_path / "agent"
    enroll(agent_server, state)
    handle = agent_server.queue_script("printf 'a\\000b\\n'\n")
    run_once(state)
    result = stored(agent_server, handle)
    assert (result.outcome, result.exit_code, result.stdout) == ("completed", 0, b"a\x00b\n")


def post_raw(url: str, path: str, data: bytes, authorization: str) -> tuple[int, dict]:
    """(status, JSON answer) of a call whose body is ``data`` as it is."""
    request = urllib.request.Request(url + path, data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def post_oversized(url: str, path: str, size: int, authorization: str) -> tuple[int, dict]:
    """(status, JSON answer) of a call declaring a ``size``-byte body, sent in pieces only while
    the server has not answered: a server that refuses by the declared length answers at once and
    closes, and a client that went on sending would have its connection reset before reading."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=WAIT)
    try:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Authorization: {authorization}\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(head.encode("latin-1"))
        piece, sent = b" " * 65536, 0
        while sent < size and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(piece[: size - sent])
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += min(len(piece), size - sent)
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        return answer.status, json.loads(answer.read())
    finally:
        sock.close()


def test_results_are_taken_once_per_leased_instruction(agent_server, tmp_path):
    """The results endpoint's answers, called as the agent calls it (the agent acts on each)."""
    config = enroll(agent_server, tmp_path / "agent")
    agent_server.queue_script("echo leased by hand\n")
    status, answer, _ = heartbeat(agent_server, config)
    assert status == 200, answer
    [envelope] = answer["instructions"]
    instruction_id = json.loads(envelope["payload"])["instruction_id"]
    path, auth = "/api/v1/agent/results/", credential(config)

    result = make_result(instruction_id, "completed", exit_code=0, stdout="leased by hand\n")
    assert post(agent_server.url, path, {**result, "hash": "0" * 64}, auth)[:2] == (
        400,
        {"hash": ["Does not match the result's content."]},
    )
    assert post(agent_server.url, path, result, auth)[:2] == (201, {"status": "accepted"})
    assert post(agent_server.url, path, result, auth)[:2] == (200, {"status": "already_received"})
    other = make_result(instruction_id, "completed", exit_code=1, stdout="something else\n")
    assert post(agent_server.url, path, other, auth)[:2] == (
        409,
        {"status": "conflict", "detail": "A different result was already received."},
    )
    stranger = make_result(str(uuid.uuid4()), "completed", exit_code=0)
    assert post(agent_server.url, path, stranger, auth)[:2] == (404, {"detail": "No such instruction for this agent."})

    assert post_raw(agent_server.url, path, b"[1, 2]", auth) == (400, {"detail": "The body must be a JSON object."})
    status, answer = post_oversized(agent_server.url, path, MAX_BODY_BYTES + 1, auth)
    assert (status, answer["max_bytes"]) == (413, MAX_BODY_BYTES)
