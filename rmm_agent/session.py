"""A remote session's relay (the signed ``remote_session`` action, docs/sessions.md): a shell on a
PTY, as the unprivileged account unless the instruction is privileged, relayed byte for byte over
one outbound websocket to the server, which records it. The shell is launched, contained, recorded
and ended by the Runner like any step (Runner.spawn): what it starts ends with the session, and a
session an agent crash left is ended and reported by Agent.recover. The agent decides nothing: the server
says where to connect, and ends the session by closing the websocket.

Frames: binary both ways are the terminal's bytes (the server's are keystrokes, the agent's the
PTY's output); nothing else is sent."""

from __future__ import annotations

import functools
import json
import logging
import os
import pty
import select
import subprocess
import threading

from . import tls
from .results import make_result
from .runner import Runner

log = logging.getLogger(__name__)

SHELL = "/bin/sh"
READ = 64 * 1024
POLL_SECONDS = 0.2  # how often the PTY reader looks at the abort signal and the socket


@functools.cache
def available() -> bool:
    """Whether this Python has the websockets package's sync client (websockets 11 or later);
    asked on every heartbeat, so a failing import is tried once per agent process."""
    try:
        import websockets.sync.client  # noqa: F401
    except ImportError:
        return False
    return True


def websocket_url(server: str, path: str) -> str:
    """The server's ``http(s)://`` URL as ``ws(s)://`` with the signed path."""
    scheme, _, rest = server.partition("://")
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest.rstrip('/')}{path}"


def serve(client, payload: dict, abort, runner: Runner) -> dict:
    """Relay a shell until the server closes the websocket, the shell exits, or the server aborts
    the instruction: ``aborted`` then, else ``completed`` with the shell's exit code (negative:
    the signal that ended it, the hang-up when the server closed the session)."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    instruction_id = payload["instruction_id"]
    order = json.loads(payload["content"])
    try:
        account = runner.account_for(payload)
    except ValueError as exc:
        return make_result(instruction_id, "error", reason=str(exc))
    url = websocket_url(client.server, order["relay"])
    headers = {"Authorization": f"Agent {client.agent_id}:{client.secret}"}
    ssl_context = tls.context(client.ca_file) if url.startswith("wss://") else None
    try:
        socket = connect(url, additional_headers=headers, ssl=ssl_context, open_timeout=15, max_size=READ * 4)
    except Exception as exc:  # noqa: BLE001 - whatever stops the relay opening, the server learns it
        return make_result(instruction_id, "error", reason=f"could not open the session relay: {exc}")
    main, child = pty.openpty()
    home = os.path.expanduser(f"~{account.name}") if account else os.path.expanduser("~")
    env = {"TERM": "xterm-256color", "HOME": home, "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}
    try:
        shell = runner.spawn(payload, account, [SHELL, "-i"], stdio=child, env=env)
    except (OSError, subprocess.SubprocessError) as exc:
        socket.close()
        os.close(main)
        return make_result(instruction_id, "error", reason=f"could not start the session's shell: {exc}")
    finally:
        os.close(child)
    ended, shell_closed = threading.Event(), threading.Event()
    reader = threading.Thread(target=_pty_to_socket, args=(main, socket, ended, shell_closed, abort), daemon=True)
    reader.start()
    why = "the server closed the session"
    try:
        while not ended.is_set():
            try:
                data = socket.recv(timeout=POLL_SECONDS)
            except TimeoutError:
                if abort.is_set():
                    why = "aborted by server"
                    break
                continue
            except ConnectionClosed:
                break
            if isinstance(data, bytes):
                os.write(main, data)
        if shell_closed.is_set():
            why = "the shell exited"
    finally:
        ended.set()
        socket.close()
        exit_code, contained = runner.end(shell)
        reader.join(timeout=5)
        os.close(main)
    log.info("session %s ended: %s", order["session"], why)
    if abort.is_set():
        return make_result(instruction_id, "aborted", reason=abort.reason, containment=contained)
    return make_result(instruction_id, "completed", exit_code=exit_code, reason=why, containment=contained)


def _pty_to_socket(main: int, socket, ended: threading.Event, shell_closed: threading.Event, abort) -> None:
    """The shell's output to the server until the shell's side closes (``shell_closed``) or the
    relay ends."""
    from websockets.exceptions import ConnectionClosed

    try:
        while not ended.is_set() and not abort.is_set():
            ready, _, _ = select.select([main], [], [], POLL_SECONDS)
            if not ready:
                continue
            try:
                data = os.read(main, READ)
            except OSError:  # the shell and all it started have closed the PTY
                data = b""
            if not data:
                shell_closed.set()
                break
            socket.send(data)
    except ConnectionClosed:
        pass
    finally:
        ended.set()
        socket.close()
