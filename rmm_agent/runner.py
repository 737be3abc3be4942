"""Running one verified instruction as a process group, with timeout, abort and capped output.

Each instruction gets its own session/process group so that a timeout or an abort reaches
everything the script started, not just the interpreter.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from .protocol import (
    DELIVERY_STREAM_BYTES,
    MAX_BODY_BYTES,
    MAX_STREAM_BYTES,
    decode_stream,
    encode_body,
    encode_stream,
    iso_utc,
    result_hash,
    sendable_text,
)

KILL_GRACE_SECONDS = 3.0
POLL_SECONDS = 0.05
READER_JOIN_SECONDS = 5.0
DEFAULT_RUN_AS = "nobody"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SYSTEM_BIN_DIRS = ("/usr/local/bin", "/usr/bin", "/bin")

SCRIPT_EXTENSIONS = {"sh": "sh", "bash": "sh", "python": "py", "powershell": "ps1"}


@dataclass(frozen=True)
class Account:
    """The unprivileged account a process is dropped to."""

    name: str
    uid: int
    gid: int


class AbortSignal:
    """Set from another thread to stop a running instruction (server abort or shutdown)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        """Ask the runner to kill the instruction's process group."""
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        """True once an abort was requested."""
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout``, waking early on abort."""
        return self._event.wait(timeout)


def now_utc() -> datetime:
    """The current time in UTC (one place, for timestamps in results)."""
    return datetime.now(UTC)


def make_result(
    instruction_id: str,
    outcome: str,
    *,
    exit_code: int | None = None,
    stdout: bytes | str = b"",
    stderr: bytes | str = b"",
    stdout_truncated: bool = False,
    stderr_truncated: bool = False,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
    reason: str | None = None,
) -> dict:
    """Build a result body exactly as the results endpoint expects, hash included.

    The streams are the exact bytes the script printed (text is taken as its UTF-8); each is
    sent as text or as base64 (:func:`~rmm_agent.protocol.encode_stream`), and cut until the
    encoded body fits :data:`~rmm_agent.protocol.MAX_BODY_BYTES`.
    """
    finished = finished_at or now_utc()
    result = {
        "instruction_id": instruction_id,
        "outcome": outcome,
        "exit_code": exit_code,
        "stdout_truncated": stdout_truncated,
        "stderr_truncated": stderr_truncated,
        "started_at": iso_utc(started_at or finished),
        "finished_at": iso_utc(finished),
        "reason": sendable_text(reason),
    }
    return seal_result(result, {"stdout": _as_bytes(stdout), "stderr": _as_bytes(stderr)})


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)


def seal_result(result: dict, streams: dict[str, bytes], limit: int = MAX_BODY_BYTES) -> dict:
    """Encode ``streams`` into ``result`` and hash it, cutting the largest stream (and saying
    so in its ``*_truncated``) until the body as sent is at most ``limit`` bytes."""
    streams = dict(streams)
    while True:
        for name, data in streams.items():
            result[name], result[f"{name}_encoding"] = encode_stream(data)
        result.pop("hash", None)
        result["hash"] = result_hash(result)
        excess = len(encode_body(result)) - limit
        if excess <= 0:
            return result
        name = max(streams, key=lambda key: len(result[key]))
        data = streams[name]
        if not data:
            raise ValueError("the result does not fit the protocol's bound even without output")
        per_char = len(data) / len(result[name])  # bytes of output per character sent
        streams[name] = data[: max(0, len(data) - int(excess * per_char) - 1)]
        result[f"{name}_truncated"] = True


def truncated_for_delivery(result: dict) -> dict | None:
    """The result to send instead of one the server refused (400, 413, …): the same result with
    each stream cut to :data:`~rmm_agent.protocol.DELIVERY_STREAM_BYTES`, or, once that was
    refused too, to nothing; ``truncated_for_delivery`` and the first result's ``original_hash``
    say so, under the hash. None when nothing is left to cut."""
    streams = {}
    for name in ("stdout", "stderr"):
        try:
            streams[name] = decode_stream(str(result.get(name) or ""), result.get(f"{name}_encoding"))
        except ValueError:
            streams[name] = b""  # a stream that does not decode cannot be sent either
    again = bool(result.get("truncated_for_delivery"))
    if again and not any(streams.values()):
        return None
    keep = 0 if again else DELIVERY_STREAM_BYTES
    smaller = {key: value for key, value in result.items() if key != "hash"}
    for name, data in streams.items():
        if len(data) > keep:
            streams[name] = data[:keep]
            smaller[f"{name}_truncated"] = True
    original = result.get("original_hash") or result.get("hash")
    if isinstance(original, str) and len(original) == 64:
        smaller["original_hash"] = original
    smaller["truncated_for_delivery"] = True
    smaller["reason"] = sendable_text(result.get("reason"))
    return seal_result(smaller, streams)


def refused_result(instruction_id: str, reason: str) -> dict:
    """A refusal is reported like any other result, but nothing was executed."""
    return make_result(instruction_id, "refused", reason=reason)


def drop_to_account(payload: dict, run_as: str | None) -> str | None:
    """Name of the account to run as, or None to run as the agent itself.

    Least privilege: a root agent runs unprivileged instructions as ``run_as``; an agent that
    is not root cannot change identity and runs everything as itself.
    """
    if os.geteuid() != 0 or payload.get("privileged", False) is True:
        return None
    return run_as or DEFAULT_RUN_AS


def lookup_account(name: str) -> Account:
    """Resolve an account name; raises KeyError if it does not exist."""
    entry = pwd.getpwnam(name)
    return Account(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)


def _allows(st: os.stat_result, account: Account, mask: int) -> bool:
    """Whether ``account`` has all ``mask`` bits (r=4, x=1) on a file with ``st``."""
    if st.st_uid == account.uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid == account.gid:
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return bits & mask == mask


def usable_by(path: str, account: Account | None) -> bool:
    """Whether ``account`` (None: this process) could execute ``path``.

    Checked by hand for another account because root's ``os.access`` says yes to everything,
    and interpreters found on root's PATH (e.g. under /root) are often out of reach.
    """
    if not os.path.isfile(path):
        return False
    if account is None:
        return os.access(path, os.X_OK)
    for candidate in {os.path.abspath(path), os.path.realpath(path)}:
        try:
            for parent in Path(candidate).parents:
                if not _allows(os.stat(parent), account, 1):
                    return False
            if not _allows(os.stat(candidate), account, 5):
                return False
        except OSError:
            return False
    return True


def _search(name: str, account: Account | None) -> str | None:
    """First ``name`` on PATH (then the system dirs) that ``account`` can execute."""
    dirs = os.environ.get("PATH", DEFAULT_PATH).split(os.pathsep) + list(SYSTEM_BIN_DIRS)
    seen = set()
    for directory in dirs:
        if not directory or directory in seen:
            continue
        seen.add(directory)
        candidate = os.path.join(directory, name)
        if usable_by(candidate, account):
            return candidate
    return None


def interpreter_command(interpreter: str, account: Account | None = None) -> str | None:
    """Absolute path of the program for ``interpreter``, or None when it is unavailable."""
    if interpreter == "sh":
        return "/bin/sh" if usable_by("/bin/sh", account) else None
    if interpreter == "bash":
        return _search("bash", account)
    if interpreter == "python":
        found = _search("python3", account)
        if found is None and sys.executable and usable_by(sys.executable, account):
            found = sys.executable
        return found
    if interpreter == "powershell":
        return _search("pwsh", account)
    return None


class _Capture:
    """Reads one pipe to the end, keeping at most ``limit`` bytes so the child never blocks."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False
        self.thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self.thread.start()

    def _drain(self, stream: IO[bytes]) -> None:
        try:
            while True:
                chunk = stream.read1(65536)  # type: ignore[attr-defined]
                if not chunk:
                    break
                room = self.limit - len(self.data)
                if room > 0:
                    self.data += chunk[:room]
                if len(chunk) > room:
                    self.truncated = True
        except (OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                stream.close()

    def captured(self) -> bytes:
        """The exact bytes kept (the first ``limit``)."""
        return bytes(self.data)


def _group_members(pgid: int) -> list[int] | None:
    """Live (non-zombie) pids in process group ``pgid``; None where /proc is unavailable.

    Zombies do not count: in containers PID 1 may never reap orphans, and they hold nothing.
    """
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return None
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ..." -- comm may contain spaces and parentheses.
        fields = raw[raw.rfind(")") + 2 :].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def group_alive(pgid: int) -> bool:
    """Whether any live process remains in the group."""
    members = _group_members(pgid)
    if members is not None:
        return bool(members)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(pgid: int, grace: float = KILL_GRACE_SECONDS) -> None:
    """SIGTERM the whole group, then SIGKILL whatever is still there after ``grace`` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return
        time.sleep(POLL_SECONDS)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _leader_exited(proc: subprocess.Popen) -> bool:
    """Whether the interpreter exited, without reaping it.

    Not reaping keeps its pid (= the group id) reserved, so killing leftovers of the group
    can never hit an unrelated process that reused the number.
    """
    if hasattr(os, "waitid"):
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return proc.poll() is not None
        return info is not None
    return proc.poll() is not None


def _signal_name(number: int) -> str:
    """SIGTERM-style name for a signal number, or the number itself if unknown."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _prepare_workdir(instruction_id: str, work_root: Path, account: Account | None) -> Path:
    """Create the instruction's private work dir, owned by whoever will run the script.

    An unprivileged account cannot traverse the agent's 0700 state dir, so its work dir is
    a fresh private directory in the system temp dir instead, handed over to that account.
    """
    if account is None:
        work_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        workdir = work_root / instruction_id
        if workdir.exists():
            shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(mode=0o700)
        return workdir
    workdir = Path(tempfile.mkdtemp(prefix=f"rmm-{instruction_id}-"))
    os.chown(workdir, account.uid, account.gid)
    os.chmod(workdir, 0o700)
    return workdir


def _write_script(workdir: Path, payload: dict, account: Account | None) -> Path:
    """Write the exact signed bytes; only the account that runs it may read it."""
    script = workdir / f"script.{SCRIPT_EXTENSIONS[payload['interpreter']]}"
    fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "wb") as handle:
        handle.write(payload["content"].encode("utf-8"))
    if account is not None:
        os.chown(script, account.uid, account.gid)
    return script


def _environment(instruction_id: str, workdir: Path, account: Account | None) -> dict[str, str]:
    """The minimal environment: nothing of the agent's (secrets, proxies) leaks into scripts."""
    home = str(workdir) if account is not None else os.environ.get("HOME", str(workdir))
    return {
        "PATH": os.environ.get("PATH", DEFAULT_PATH),
        "HOME": home,
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "RMM_INSTRUCTION_ID": instruction_id,
    }


def run_instruction(
    payload: dict,
    work_root: str | os.PathLike[str],
    *,
    run_as: str | None = DEFAULT_RUN_AS,
    abort: AbortSignal | None = None,
    on_start: Callable[[int], None] | None = None,
    kill_grace: float = KILL_GRACE_SECONDS,
    max_stream_bytes: int = MAX_STREAM_BYTES,
) -> dict:
    """Run a verified instruction to its end and return its result (never raises for it).

    ``on_start`` (a callable taking the pid) lets callers observe the process group.
    """
    instruction_id = payload["instruction_id"]
    started_at = now_utc()
    abort = abort or AbortSignal()

    def error(reason: str) -> dict:
        return make_result(instruction_id, "error", started_at=started_at, reason=reason)

    account_name = drop_to_account(payload, run_as)
    account: Account | None = None
    if account_name is not None:
        try:
            account = lookup_account(account_name)
        except KeyError:
            return error(f"run_as account {account_name!r} does not exist")

    program = interpreter_command(payload["interpreter"], account)
    if program is None:
        return refused_result(instruction_id, "unsupported_interpreter")
    if abort.is_set():
        return make_result(instruction_id, "aborted", started_at=started_at, reason=abort.reason)

    workdir: Path | None = None
    try:
        workdir = _prepare_workdir(instruction_id, Path(work_root), account)
        script = _write_script(workdir, payload, account)
        extra: dict = {}
        if account is not None:
            extra = {"user": account.uid, "group": account.gid, "extra_groups": []}
        try:
            proc = subprocess.Popen(
                [program, str(script), *payload.get("arguments", [])],
                cwd=workdir,
                env=_environment(instruction_id, workdir, account),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
                **extra,
            )
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            return error(f"failed to start {program}: {exc}")
        return _supervise(proc, payload, abort, started_at, on_start, kill_grace, max_stream_bytes)
    except OSError as exc:
        return error(f"failed to prepare work dir: {exc}")
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def _supervise(
    proc: subprocess.Popen,
    payload: dict,
    abort: AbortSignal,
    started_at: datetime,
    on_start: Callable[[int], None] | None,
    kill_grace: float,
    max_stream_bytes: int,
) -> dict:
    """Wait for exit, timeout or abort; always leave no process of the group behind."""
    out = _Capture(proc.stdout, max_stream_bytes)  # type: ignore[arg-type]
    err = _Capture(proc.stderr, max_stream_bytes)  # type: ignore[arg-type]
    if on_start is not None:
        on_start(proc.pid)
    timeout = float(payload["timeout_seconds"])
    deadline = time.monotonic() + timeout
    outcome, reason = "completed", None
    while not _leader_exited(proc):
        if abort.is_set():
            outcome, reason = "aborted", abort.reason
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            outcome, reason = "timed_out", f"timed out after {timeout:g}s"
            break
        abort.wait(min(POLL_SECONDS, remaining))
    # Also on normal exit: background children may not outlive the instruction.
    kill_group(proc.pid, kill_grace)
    returncode = proc.wait()
    out.thread.join(READER_JOIN_SECONDS)
    err.thread.join(READER_JOIN_SECONDS)
    exit_code: int | None = None
    if outcome == "completed":
        exit_code = returncode
        if returncode < 0:
            reason = f"killed by signal {_signal_name(-returncode)}"
    return make_result(
        payload["instruction_id"],
        outcome,
        exit_code=exit_code,
        stdout=out.captured(),
        stderr=err.captured(),
        stdout_truncated=out.truncated,
        stderr_truncated=err.truncated,
        started_at=started_at,
        finished_at=now_utc(),
        reason=reason,
    )
