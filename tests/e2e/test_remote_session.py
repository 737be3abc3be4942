"""A remote terminal session end to end (issue 18, part 2): a technician opens it on a PSA task's
authority; the real agent, sent its signed step, opens the relay and runs a shell on a PTY as the
unprivileged account; a websocket client plays the browser (signed in, with the page's single-use
join token) and types ``id -u; echo hello``; the session ends; the recording is sealed as
``session_recording`` evidence whose sha256 the session names, an export of it verifies offline,
and a flipped byte makes verify.py name the recording."""

from __future__ import annotations

import hashlib
import html
import json
import re
import subprocess
import sys
import time
import uuid

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.e2e.flows import Session, console_users, make_world, wait_for
from tests.e2e.server import ROOT
from tests.e2e.test_key_rotation import export_bundle, verify_offline

URL = "/api/v1/remote-sessions/"
PASSWORD = "a long test password 1"


@pytest.fixture
def running_agent(server):
    started = []

    def start(w):
        agent = subprocess.Popen(  # noqa: S603 - the real agent, as the product runs it
            [sys.executable, "-m", "rmm_agent", "run", "--state-dir", str(w["state"])],
            cwd=ROOT,
            env=server.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.terminate()
        agent.wait(timeout=30)


def open_terminal(server, w, tech: str, token: str, running_agent) -> tuple[dict, Session]:
    running_agent(w)

    def capable():
        agents = server.request("GET", f"/api/v1/agents/?asset={w['asset']}", token=token).json()["results"]
        return agents and agents[0]["last_seen_at"] and "remote_session" in agents[0]["capabilities"]

    wait_for(capable, timeout=30, what="the running agent reports remote_session")
    r = server.request(
        "POST",
        URL,
        {"asset": w["asset"], "session_type": "terminal", "provider": "terminal", "psa_task_id": w["task"]},
        token,
    )
    assert r.status == 201, r.body
    opened = r.json()
    assert opened["join_url"] == f"/console/sessions/{opened['id']}/"
    return opened, Session(server).login(tech, PASSWORD)


def join(server, browser: Session, join_url: str):
    status, _, page = browser.open(join_url)
    assert status == 200
    relay = html.unescape(re.search(r'data-relay="([^"]+)"', page).group(1))
    return connect(
        server.url.replace("http", "ws", 1) + relay,
        additional_headers={"Cookie": browser.cookie_header, "Origin": server.url},
        open_timeout=15,
    ), relay


def read_until(socket, pattern: re.Pattern, seconds: float = 20) -> str:
    seen = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            frame = socket.recv(timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            break
        seen += frame if isinstance(frame, bytes) else frame.encode()
        found = pattern.search(seen.decode("utf-8", "replace"))
        if found:
            return found
    raise AssertionError(f"never saw {pattern.pattern!r} in {seen[-2000:]!r}")


def test_a_terminal_session_is_relayed_recorded_sealed_and_verifies(server, running_agent, tmp_path):
    w = make_world(server)
    tech = f"tech-{uuid.uuid4().hex[:6]}"
    console_users(server, {tech: ("technician", [w["site"]])}, PASSWORD)
    token = server.manage("rmm_token", tech, "--role", "technician", "--site", w["site"]).stdout.strip()
    opened, browser = open_terminal(server, w, tech, token, running_agent)
    socket, relay = join(server, browser, opened["join_url"])
    with socket:
        wait_for(
            lambda: server.request("GET", f"{URL}{opened['id']}/", token=token).json()["status"] == "running",
            timeout=30,
            what="the agent took the session's step",
        )
        time.sleep(1)  # the agent's relay connects; keystrokes before that reach nobody
        socket.send(b"id -u; echo hel''lo\n")
        answer = read_until(socket, re.compile(r"\n(\d+)\r?\nhello\r?\n"))
        assert int(answer.group(1)) != 0  # the unprivileged account, not root
        r = server.request("POST", f"{URL}{opened['id']}/end/", token=token)
        assert r.status == 200, r.body
        assert r.json()["end_reason"] == "user"
        with pytest.raises(ConnectionClosed):
            while True:
                socket.recv(timeout=10)
    # the join token was single-use: a second join with it is refused
    with pytest.raises(InvalidStatus) as refused:
        connect(
            server.url.replace("http", "ws", 1) + relay,
            additional_headers={"Cookie": browser.cookie_header, "Origin": server.url},
            open_timeout=15,
        )
    assert refused.value.response.status_code == 403

    def sealed():
        shown = server.request("GET", f"{URL}{opened['id']}/", token=token).json()
        return shown if shown["recording_sha256"] else None

    shown = wait_for(sealed, timeout=30, what="the recording is sealed")
    assert shown["recorded"] is True and shown["ended_at"] and len(shown["evidence"]) >= 1
    records = [server.request("GET", f"/api/v1/evidence/{pk}/", token=token).json() for pk in shown["evidence"]]
    recording = next(r for r in records if r["evidence_type"] == "session_recording")
    assert recording["hash"] == shown["recording_sha256"]

    compliance = server.token(f"comp-{uuid.uuid4().hex[:6]}", "compliance")
    _, folder = export_bundle(server, w, compliance, tmp_path / "export")
    done = verify_offline(folder)
    assert done.returncode == 0, done.stdout + done.stderr
    (cast,) = [p for p in folder.rglob("*.cast")]
    data = cast.read_bytes()
    assert hashlib.sha256(data).hexdigest() == shown["recording_sha256"]
    lines = data.decode().splitlines()
    assert json.loads(lines[0])["version"] == 2
    frames = [json.loads(line) for line in lines[1:]]
    typed = "".join(text for _, kind, text in frames if kind == "i")
    shown_out = "".join(text for _, kind, text in frames if kind == "o")
    assert typed == "id -u; echo hel''lo\n" and "hello" in shown_out
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    cast.write_bytes(bytes(flipped))
    done = verify_offline(folder)
    assert done.returncode != 0 and cast.name in done.stdout + done.stderr
