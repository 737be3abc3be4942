"""The processes of ``make prod-up``, each the leader of a session of its own, so that
``make prod-down`` stops it and whatever it forked (nginx's and the task cluster's workers, a
PostgreSQL server's backends) without a process manager, as ``rmm_run`` does in the foreground."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def spawn(argv: list[str], *, cwd: Path, env: dict[str, str], log: Path) -> int:
    """``argv`` in a session of its own, detached from this one, its output appended to ``log``:
    its pid (also its session's id)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc.pid


def _table() -> dict[int, tuple[int, int]]:
    """Every live process (zombies excluded): pid -> (parent's pid, session id)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            # after the command name in parentheses: state, ppid, pgrp, session, …
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                table[int(entry.name)] = (int(fields[1]), int(fields[3]))
    return table


def session_members(sid: int) -> list[int]:
    """The live processes of the session ``sid`` and their descendants wherever they went
    (PostgreSQL's backends each start a session of their own)."""
    table = _table()
    found = {pid for pid, (_ppid, session) in table.items() if session == sid}
    grew = True
    while grew:
        more = {pid for pid, (ppid, _session) in table.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return sorted(found)


def stop_session(sid: int, timeout: float, *, mixed: bool = False) -> list[int]:
    """SIGTERM to every process of the session (to its leader alone when ``mixed``, as systemd's
    KillMode=mixed), SIGKILL to those left after ``timeout`` seconds (as systemd does after a
    unit's TimeoutStopSec): the pids that were still running then."""
    members = session_members(sid)
    for pid in [sid] if mixed else members:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while session_members(sid) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = session_members(sid)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while session_members(sid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left
