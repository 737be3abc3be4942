"""A remote session's shell on the agent (rmm_agent/session.py), with real processes and a real
websocket server on 127.0.0.1 playing the server's relay: the shell is contained, recorded and
ended by the Runner like every step, so nothing it started outlives the session."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from websockets.sync.server import serve as websocket_server

from rmm_agent import session
from rmm_agent.client import Client
from rmm_agent.runner import AbortSignal, Runner
from tests.agent.conftest import AGENT_ID, SECRET, make_payload, require_root

MARK = "31337.25"  # the sleep a session starts in a session of its own


def leftovers() -> list[int]:
    """Pids of the ``sleep MARK`` processes still alive."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes() == f"sleep\0{MARK}\0".encode():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


class Relay:
    """The server's side of one session: types ``typed``, waits for ``until`` in the output, notes
    what the agent's running records and processes are then, and hangs up (or lets the shell exit)."""

    def __init__(
        self, typed: bytes, until: bytes, running_dir: Path, hang_up: bool = True, abort: AbortSignal | None = None
    ) -> None:
        self.typed, self.until, self.running_dir, self.hang_up = typed, until, running_dir, hang_up
        self.abort = abort
        self.output = b""
        self.during: dict = {}
        self.server = websocket_server(self.handle, "127.0.0.1", 0)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.socket.getsockname()[1]}"

    def handle(self, socket) -> None:
        socket.send(self.typed)
        deadline = time.monotonic() + 10
        while self.until not in self.output and time.monotonic() < deadline:
            try:
                self.output += socket.recv(timeout=1)
            except TimeoutError:
                continue
            except Exception:  # noqa: BLE001 - the shell exited and the agent hung up
                return
        started = time.monotonic() + 3
        while not leftovers() and time.monotonic() < started:
            time.sleep(0.05)
        self.during = {"records": sorted(p.name for p in self.running_dir.glob("*.json")), "sleeping": leftovers()}
        if self.abort is not None:  # the server aborts the instruction (the kill switch, an end)
            self.abort.set("aborted by server")
        if self.hang_up:
            socket.close()
        else:
            for _ in range(50):  # the shell exits by itself; the agent hangs up
                try:
                    self.output += socket.recv(timeout=0.2)
                except TimeoutError:
                    continue
                except Exception:  # noqa: BLE001
                    return


def serve(tmp_path: Path, typed: bytes, until: bytes, hang_up: bool | None = True):
    """One session relayed by a fresh runner; ``hang_up`` None: the server aborts it instead."""
    abort = AbortSignal()
    running = tmp_path / "running"
    relay = Relay(typed, until, running, bool(hang_up), abort if hang_up is None else None)
    runner = Runner(tmp_path / "work", running_dir=running, kill_grace=0.5)
    client = Client(relay.url, agent_id=AGENT_ID, secret=SECRET, allow_insecure_http=True)
    order = {"session": "s-1", "relay": "/ws/agent/sessions/s-1/"}
    payload = make_payload(json.dumps(order), interpreter="remote_session")
    try:
        result = session.serve(client, payload, abort, runner)
    finally:
        relay.server.shutdown()
    return payload, result, relay, runner, running


def test_a_setsid_child_started_in_a_session_is_gone_when_the_session_ends(tmp_path: Path) -> None:
    require_root("containing a session's shell as the run-as account")
    payload, result, relay, runner, running = serve(
        tmp_path, f"setsid sleep {MARK} & printf 'sta%s-%s.\\n' rted \"$RMM_INSTRUCTION_ID\"\n".encode(), b"started-"
    )
    assert f"started-{payload['instruction_id']}.".encode() in relay.output  # the shell carries its tag
    assert relay.during["sleeping"], "the session started its sleep"
    assert relay.during["records"] == [f"{payload['instruction_id']}.json"]  # recorded like a step
    deadline = time.monotonic() + 3
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leftovers() == []
    assert any(MARK in item["command"] for item in result["containment"]["killed"])
    runner.finish(payload["instruction_id"])
    assert list(running.glob("*.json")) == []


def test_a_session_an_agent_crash_left_is_ended_and_reported_by_recover(tmp_path: Path) -> None:
    """A runner that never ended its session (the agent was killed): the next one ends it."""
    require_root("containing a session's shell as the run-as account")
    running = tmp_path / "running"
    runner = Runner(tmp_path / "work", running_dir=running, kill_grace=0.5)
    main, child = os.openpty()
    payload = make_payload("{}", interpreter="remote_session")
    spawned = runner.spawn(
        payload, runner.account_for(payload), ["/bin/sh", "-c", f"setsid sleep {MARK} & wait"], stdio=child, env={}
    )
    os.close(child)
    deadline = time.monotonic() + 3
    while not leftovers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leftovers()
    results = Runner(tmp_path / "work", running_dir=running, kill_grace=0.5).recover()
    assert [(r["instruction_id"], r["outcome"]) for r in results] == [(payload["instruction_id"], "aborted")]
    assert leftovers() == []
    spawned.proc.wait()
    os.close(main)


def test_a_shell_that_exits_reports_its_exit_code(tmp_path: Path) -> None:
    _, result, relay, _, _ = serve(tmp_path, b"printf 'by%s\\n' e; exit 7\n", b"bye", hang_up=False)
    assert (result["outcome"], result["exit_code"], result["reason"]) == ("completed", 7, "the shell exited")


def test_a_session_the_server_aborts_is_reported_aborted(tmp_path: Path) -> None:
    _, result, _, _, _ = serve(tmp_path, b"printf 'he%s\\n' re\n", b"here", hang_up=None)
    assert (result["outcome"], result["exit_code"], result["reason"]) == ("aborted", None, "aborted by server")


@pytest.fixture(autouse=True)
def _no_leftovers():
    yield
    for pid in leftovers():
        os.kill(pid, 9)
