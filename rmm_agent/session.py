"""A remote session's relay (the signed ``remote_session`` action, docs/sessions.md): a shell on a
PTY, as the unprivileged account unless the instruction is privileged, relayed byte for byte over
one outbound websocket to the server, which records it. The agent decides nothing: the server
says where to connect, and ends the session by closing the websocket.

Frames: binary both ways are the terminal's bytes (the server's are keystrokes, the agent's the
PTY's output); nothing else is sent."""

from __future__ import annotations

import json
import logging
import os
import pty
import select
import signal
import subprocess
import threading

from . import tls
from .accounts import drop_to_account, lookup_account
from .results import make_result
from .spawn import preexec

log = logging.getLogger(__name__)

SHELL = "/bin/sh"
READ = 64 * 1024
POLL_SECONDS = 0.2  # how often the PTY reader looks at the abort signal and the socket


def available() -> bool:
    """Whether this Python has the websockets package's sync client (websockets 11 or later)."""
    try:
        import websockets.sync.client  # noqa: F401
    except ImportError:
        return False
    return True


def websocket_url(server: str, path: str) -> str:
    """The server's ``http(s)://`` URL as ``ws(s)://`` with the signed path."""
    scheme, _, rest = server.partition("://")
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest.rstrip('/')}{path}"


def serve(client, payload: dict, abort, run_as: str) -> dict:
    """Relay a shell until the server closes the websocket, the shell exits, or the server aborts
    the instruction; the result says which, with the shell's exit code."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    instruction_id = payload["instruction_id"]
    order = json.loads(payload["content"])
    account_name = drop_to_account(payload, run_as)
    account = lookup_account(account_name) if account_name else None
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
    shell = subprocess.Popen(  # noqa: S603 - a fixed program; the session is the signed order
        [SHELL, "-i"],
        stdin=child,
        stdout=child,
        stderr=child,
        cwd="/",
        env=env,
        start_new_session=True,
        preexec_fn=preexec(None, account) if account is not None else None,  # noqa: PLW1509 - syscalls only
    )
    os.close(child)
    ended = threading.Event()
    reader = threading.Thread(target=_pty_to_socket, args=(main, socket, ended, abort), daemon=True)
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
        else:
            why = "the shell exited"
    finally:
        ended.set()
        socket.close()
        _stop(shell)
        reader.join(timeout=5)
        os.close(main)
    log.info("session %s ended: %s", order["session"], why)
    return make_result(instruction_id, "completed", exit_code=0, reason=why)


def _pty_to_socket(main: int, socket, ended: threading.Event, abort) -> None:
    """The shell's output to the server until the shell's side closes or the relay ends."""
    from websockets.exceptions import ConnectionClosed

    try:
        while not ended.is_set() and not abort.is_set():
            ready, _, _ = select.select([main], [], [], POLL_SECONDS)
            if not ready:
                continue
            try:
                data = os.read(main, READ)
            except OSError:  # the shell and all it started have closed the PTY
                break
            if not data:
                break
            socket.send(data)
    except ConnectionClosed:
        pass
    finally:
        ended.set()
        socket.close()


def _stop(shell: subprocess.Popen) -> None:
    """Hang up the shell's whole session (SIGHUP, then SIGKILL after a second)."""
    for sig in (signal.SIGHUP, signal.SIGKILL):
        try:
            os.killpg(shell.pid, sig)
        except ProcessLookupError:
            break
        try:
            shell.wait(timeout=1)
            return
        except subprocess.TimeoutExpired:
            continue
    shell.wait()
