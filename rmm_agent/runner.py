"""Running one verified instruction: sealed script, private work dir, contained, with timeout,
abort and capped output.

- The signed bytes go into a sealed memfd, are hashed again there, and the interpreter reads
  that descriptor (rmm_agent/spawn.py, which also makes its environment and drops its account).
- The work dir is made through descriptors inside a work root that belongs to the agent and
  that no one else can write (rmm_agent/workdirs.py).
- Everything the instruction starts is contained (rmm_agent/containment.py) and ended with it;
  what had to be killed is named in the result's ``containment``.
- A step's artefacts are fetched and verified before anything of it starts
  (rmm_agent/artefacts.py), each given to the script as a read-only descriptor
  (``RMM_ARTEFACT_<NAME>=/dev/fd/N``) and deleted with the step.
- The result is built, hashed and fitted to the protocol's bound in rmm_agent/results.py, which
  also reads the script's structured result.
- A small record per running instruction (``running/<id>.json`` in the state dir) lets a
  restarted agent end and report what a previous run left (:meth:`Runner.recover`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

from . import spawn
from .accounts import DEFAULT_RUN_AS, Account, drop_to_account, interpreter_command, lookup_account
from .artefacts import ArtefactMismatch, Fetcher, FetchFailed, FetchStopped
from .containment import (
    ACCOUNT,
    CGROUP,
    ENV_TAG,
    METHODS,
    PROCESS_GROUP,
    Cgroup,
    ProcessInfo,
    boot_id,
    boot_ticks,
    cgroup_parent,
    environment_tag,
    process_info,
    report,
    sweep,
)
from .live import LiveOutput
from .protocol import MAX_STREAM_BYTES, REASON_ARTEFACT_MISMATCH
from .results import make_result, now_utc, read_structured, reboot_follows, refused_result
from .state import atomic_write_json
from .workdirs import DIR_FLAGS, WorkRoot

log = logging.getLogger("rmm_agent")

KILL_GRACE_SECONDS = 3.0
POLL_SECONDS = 0.05
READER_JOIN_SECONDS = 5.0

MAX_REASON_PROCESSES = 10


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


class _Capture:
    """Reads one pipe to the end, keeping at most ``limit`` bytes so the child never blocks;
    each read is also handed to ``on_data`` (live output) when given."""

    def __init__(self, stream: IO[bytes], limit: int, on_data: Callable[[bytes], None] | None = None) -> None:
        self.limit = limit
        self.on_data = on_data
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
                if self.on_data is not None:
                    self.on_data(chunk)
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


def _killed_summary(killed: list[dict]) -> str:
    """``pid (command)`` of the first few killed processes, for a reason line."""
    named = ", ".join(f"{item['pid']} ({item['command'][:80]})" for item in killed[:MAX_REASON_PROCESSES])
    more = len(killed) - MAX_REASON_PROCESSES
    return named + (f" and {more} more" if more > 0 else "")


@dataclass
class _Launch:
    """What one instruction holds while it runs, until it is ended and cleaned up."""

    instruction_id: str
    account: Account | None
    method: str
    since: int  # boot ticks when it began
    cgroup: Cgroup | None = None
    cgroup_created: bool = False
    workdir: Path | None = None
    leader: ProcessInfo | None = None
    script_fd: int | None = None
    procs_fd: int | None = None
    deadline: float = 0.0  # monotonic: the instruction's timeout counts from before its fetches
    artefact_fds: dict[str, int] | None = None  # the script's variable -> its verified file
    workdir_fd: int | None = None


@dataclass
class Spawned:
    """A program :meth:`Runner.spawn` started, held until :meth:`Runner.end`."""

    proc: subprocess.Popen
    launch: _Launch


class Runner:
    """Runs the verified instructions of one agent, each contained, and cleans up after them.

    ``containment`` forces a method (``"cgroup"``, ``"account"``, ``"process_group"``); None
    picks the best one available (rmm_agent/containment.py). ``running_dir`` (the state dir's
    ``running/``) keeps a record of each instruction from before it starts until
    :meth:`finish`, so :meth:`recover` can end and report what a killed agent left.
    """

    def __init__(
        self,
        work_root: str | os.PathLike[str],
        *,
        run_as: str | None = DEFAULT_RUN_AS,
        running_dir: str | os.PathLike[str] | None = None,
        containment: str | None = None,
        kill_grace: float = KILL_GRACE_SECONDS,
        max_stream_bytes: int = MAX_STREAM_BYTES,
        fetcher: Fetcher | None = None,
    ) -> None:
        if containment not in (None, *METHODS):
            raise ValueError(f"containment must be one of {', '.join(METHODS)}, not {containment!r}")
        self.work_root = WorkRoot(work_root)
        self.run_as = run_as
        self.running_dir = Path(running_dir) if running_dir is not None else None
        self.containment = containment
        self.kill_grace = kill_grace
        self.max_stream_bytes = max_stream_bytes
        self.fetcher = fetcher  # None: instructions that name artefacts cannot run here
        self.cgroup_parent = cgroup_parent() if containment in (None, CGROUP) else None
        if containment == CGROUP and self.cgroup_parent is None:
            raise ValueError("no cgroup v2 in which this agent may create cgroups")
        self._lock = threading.Lock()
        self._active: dict[str, int] = {}  # running instruction -> boot ticks when it began

    def describe(self) -> str:
        """How instructions are contained, for the agent's start-up log."""
        if self.cgroup_parent is not None:
            return f"a cgroup v2 per instruction, under {self.cgroup_parent}"
        by_group = "their process group and the processes carrying their RMM_INSTRUCTION_ID"
        if self.containment == PROCESS_GROUP:
            return f"{by_group} (forced)"
        if os.geteuid() != 0:
            return f"{by_group} (no usable cgroup v2)"
        return (
            "killing every process of the run-as account started since the instruction began "
            f"(no usable cgroup v2; privileged instructions: {by_group})"
        )

    def _method(self, account: Account | None) -> str:
        if self.cgroup_parent is not None:
            return CGROUP
        if account is not None and self.containment in (None, ACCOUNT):
            return ACCOUNT
        return PROCESS_GROUP

    def _fetch_artefacts(self, launch: _Launch, payload: dict, abort: AbortSignal) -> None:
        """Fetch and verify the step's artefacts into ``.artefacts/<id>`` of the work root (the
        agent's: no other account can reach it), before the work dir or anything of the step
        exists."""
        if self.fetcher is None:
            raise FetchFailed("this runner cannot fetch artefacts")
        directory = self.work_root.make_artefacts_dir(launch.instruction_id)
        launch.artefact_fds = self.fetcher.fetch_all(payload["artefacts"], directory, launch.deadline, abort)

    # -- records of running instructions ------------------------------------------------------

    def _record_path(self, instruction_id: str) -> Path | None:
        return None if self.running_dir is None else self.running_dir / f"{instruction_id}.json"

    def _save_record(self, launch: _Launch) -> None:
        path = self._record_path(launch.instruction_id)
        if path is None:
            return
        self.running_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # type: ignore[union-attr]
        atomic_write_json(
            path,
            {
                "instruction_id": launch.instruction_id,
                "boot_id": boot_id(),
                "since": launch.since,
                "method": launch.method,
                "uid": launch.account.uid if launch.account is not None else None,
                "cgroup": str(launch.cgroup.path) if launch.cgroup is not None else None,
                "leader": None if launch.leader is None else [launch.leader.pid, launch.leader.start],
            },
        )

    def finish(self, instruction_id: str) -> None:
        """Forget a running record once the instruction's result is safely spooled."""
        path = self._record_path(instruction_id)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # -- ending an instruction ----------------------------------------------------------------

    def _account_match(self, launch: _Launch) -> Callable[[ProcessInfo], bool]:
        """The account method's rule: a process of the account carrying this instruction's id,
        or started since it began, unless it carries the id of another running instruction that
        began before it started (that one ends it). Every process the account starts during an
        instruction is thus ended by the time the last instruction overlapping it ends."""
        with self._lock:
            others = {key: value for key, value in self._active.items() if key != launch.instruction_id}
        uid = launch.account.uid if launch.account is not None else -1

        def match(info: ProcessInfo) -> bool:
            if info.uid != uid:
                return False
            tag = environment_tag(info.pid)
            if tag == launch.instruction_id:
                return True
            if info.start < launch.since:
                return False
            owner_since = others.get(tag) if tag is not None else None
            return owner_since is None or info.start < owner_since

        return match

    def _group_match(self, launch: _Launch) -> Callable[[ProcessInfo], bool]:
        """The process-group method's rule: its process group, or carrying its id."""
        uids = {os.geteuid()} | ({launch.account.uid} if launch.account is not None else set())
        leader = launch.leader

        def match(info: ProcessInfo) -> bool:
            if info.uid not in uids:
                return False
            if leader is not None and info.pgid == leader.pid and info.start >= leader.start:
                return True
            return environment_tag(info.pid) == launch.instruction_id

        return match

    def _end(self, launch: _Launch, grace: float) -> dict:
        """End everything the instruction started; its ``containment`` report."""
        if launch.method == CGROUP and launch.cgroup is not None:
            killed = launch.cgroup.end(grace)
        elif launch.method == ACCOUNT:
            killed = sweep(self._account_match(launch), grace)
        else:
            killed = sweep(self._group_match(launch), grace)
        return report(launch.method, killed)

    # -- running ------------------------------------------------------------------------------

    def run(
        self,
        payload: dict,
        abort: AbortSignal | None = None,
        on_start: Callable[[int], None] | None = None,
        live: LiveOutput | None = None,
    ) -> dict:
        """Run a verified instruction to its end and return its result (never raises for it).

        ``on_start`` (a callable taking the pid) lets callers observe the interpreter; ``live``
        streams its output while it runs, and is stopped before the result is returned.
        """
        instruction_id = payload["instruction_id"]
        started_at = now_utc()
        abort = abort or AbortSignal()

        def error(reason: str) -> dict:
            return make_result(instruction_id, "error", started_at=started_at, reason=reason)

        try:
            account = self.account_for(payload)
        except ValueError as exc:
            return error(str(exc))

        program = interpreter_command(payload["interpreter"], account)
        if program is None:
            return refused_result(instruction_id, "unsupported_interpreter")
        if abort.is_set():
            return make_result(instruction_id, "aborted", started_at=started_at, reason=abort.reason)

        launch = self._launch(instruction_id, account)
        launch.deadline = time.monotonic() + float(payload["timeout_seconds"])
        try:
            proc = self._start(launch, program, payload, abort)
        except spawn.ScriptMismatch as exc:
            self._clean_up(launch)
            return error(str(exc))
        except ArtefactMismatch as exc:
            self._clean_up(launch)
            log.error("%s refused, nothing ran: %s", instruction_id, exc)
            return refused_result(instruction_id, REASON_ARTEFACT_MISMATCH)
        except FetchStopped as exc:
            self._clean_up(launch)
            return make_result(instruction_id, exc.outcome, started_at=started_at, reason=exc.reason)
        except FetchFailed as exc:
            self._clean_up(launch)
            return error(str(exc))
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            self._clean_up(launch)
            return error(f"failed to start {program}: {exc}")
        try:
            return self._supervise(proc, launch, payload, abort, started_at, on_start, live)
        finally:
            if live is not None:
                live.stop()
            self._clean_up(launch)

    def _start(self, launch: _Launch, program: str, payload: dict, abort: AbortSignal) -> subprocess.Popen:
        """Seal the script, record the instruction, fetch its artefacts, make its work dir and
        cgroup, start it."""
        instruction_id, account = launch.instruction_id, launch.account
        launch.script_fd = spawn.sealed_script(payload)
        self._save_record(launch)  # before anything exists that a restart must clean up
        if payload.get("artefacts"):
            self._fetch_artefacts(launch, payload, abort)
        fetched = launch.artefact_fds or {}
        launch.workdir = self.work_root.make_workdir(instruction_id, account)
        launch.workdir_fd = os.open(launch.workdir, DIR_FLAGS)
        self._contain(launch)
        proc = subprocess.Popen(
            [program, f"/dev/fd/{launch.script_fd}", *payload.get("arguments", [])],
            cwd=launch.workdir,
            env={
                **spawn.environment(instruction_id, launch.workdir, account, launch.workdir_fd),
                **spawn.artefact_paths(fetched),
            },
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
            pass_fds=(launch.script_fd, launch.workdir_fd, *fetched.values()),
            preexec_fn=self._preexec(launch),  # noqa: PLW1509 - syscalls only, see spawn.preexec
        )
        self._started(launch, proc)
        return proc

    def account_for(self, payload: dict) -> Account | None:
        """The account an instruction runs as (None: the agent's own); raises ValueError when
        that account is missing or privileged (nothing may then run as root instead)."""
        account_name = drop_to_account(payload, self.run_as)
        if account_name is None:
            return None
        try:
            account = lookup_account(account_name)
        except KeyError:
            raise ValueError(
                f"run_as account {account_name!r} does not exist (create it with: python -m rmm_agent install-account)"
            ) from None
        if account.uid == 0 or account.gid == 0:
            raise ValueError(f"run_as account {account_name!r} is privileged (uid or gid 0)")
        return account

    def _launch(self, instruction_id: str, account: Account | None) -> _Launch:
        launch = _Launch(instruction_id, account, self._method(account), since=boot_ticks())
        if launch.method == CGROUP:
            launch.cgroup = Cgroup(self.cgroup_parent / instruction_id)  # type: ignore[operator]
        return launch

    def _contain(self, launch: _Launch) -> None:
        """Make its cgroup (its child joins it before exec) and count it as running."""
        if launch.cgroup is not None:
            launch.cgroup.create()
            launch.cgroup_created = True
            launch.procs_fd = launch.cgroup.open_procs()
        with self._lock:
            self._active[launch.instruction_id] = launch.since

    @staticmethod
    def _preexec(launch: _Launch) -> Callable[[], None] | None:
        if launch.procs_fd is None and launch.account is None:
            return None
        return spawn.preexec(launch.procs_fd, launch.account)

    def _started(self, launch: _Launch, proc: subprocess.Popen) -> None:
        launch.leader = process_info(proc.pid)
        if launch.method == PROCESS_GROUP:
            self._save_record(launch)  # the group to kill after a restart

    # -- a program the caller drives (a remote session's shell) -------------------------------

    def spawn(self, payload: dict, account: Account | None, argv: list[str], *, stdio: int, env: dict) -> Spawned:
        """Start ``argv`` for a verified instruction that is no script (a session's shell, on
        ``stdio``), launched, contained and recorded like every step: its cgroup (or the
        fallback), the RMM_INSTRUCTION_ID tag, a running record that :meth:`recover` ends after a
        crash. The caller drives it, ends it with :meth:`end`, and calls :meth:`finish` once its
        result is spooled. Raises OSError or SubprocessError when it cannot start."""
        launch = self._launch(payload["instruction_id"], account)
        try:
            self._save_record(launch)  # before anything exists that a restart must clean up
            self._contain(launch)
            proc = subprocess.Popen(  # noqa: S603 - the caller's fixed program, for a signed order
                argv,
                stdin=stdio,
                stdout=stdio,
                stderr=stdio,
                cwd="/",
                env={**env, ENV_TAG: launch.instruction_id},
                start_new_session=True,
                close_fds=True,
                preexec_fn=self._preexec(launch),  # noqa: PLW1509 - syscalls only, see spawn.preexec
            )
            self._started(launch, proc)
        except BaseException:
            self._clean_up(launch)
            raise
        return Spawned(proc, launch)

    def end(self, spawned: Spawned) -> tuple[int, dict]:
        """Hang up a spawned program's process group, then end everything it started and clean
        up, as for a step: (its exit status as Popen gives it, the ``containment`` report)."""
        proc = spawned.proc
        if not _leader_exited(proc):  # unreaped, its pid (the group's id) cannot be reused
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGHUP)
            hung_up = time.monotonic() + min(1.0, self.kill_grace)
            while not _leader_exited(proc) and time.monotonic() < hung_up:
                time.sleep(POLL_SECONDS)
        try:
            contained = self._end(spawned.launch, self.kill_grace)
            return proc.wait(), contained
        finally:
            self._clean_up(spawned.launch)

    def _clean_up(self, launch: _Launch) -> None:
        """Close its descriptors, remove its cgroup and its work dir (its processes are ended)."""
        for fd in (launch.script_fd, launch.procs_fd, launch.workdir_fd, *(launch.artefact_fds or {}).values()):
            if fd is not None:
                os.close(fd)
        self.work_root.remove_artefacts(launch.instruction_id)
        if launch.cgroup is not None and launch.cgroup_created:
            if launch.cgroup.populated():  # it failed to start after the child joined
                launch.cgroup.kill()
            launch.cgroup.remove()
        if launch.workdir is not None:
            self.work_root.remove_workdir(launch.instruction_id)
        with self._lock:
            self._active.pop(launch.instruction_id, None)

    def _supervise(
        self,
        proc: subprocess.Popen,
        launch: _Launch,
        payload: dict,
        abort: AbortSignal,
        started_at: datetime,
        on_start: Callable[[int], None] | None,
        live: LiveOutput | None,
    ) -> dict:
        """Wait for exit, timeout or abort; then end everything the instruction started."""
        feeds = {name: None if live is None else functools.partial(live.feed, name) for name in ("stdout", "stderr")}
        out = _Capture(proc.stdout, self.max_stream_bytes, feeds["stdout"])  # type: ignore[arg-type]
        err = _Capture(proc.stderr, self.max_stream_bytes, feeds["stderr"])  # type: ignore[arg-type]
        if live is not None:
            live.start()
        if on_start is not None:
            on_start(proc.pid)
        timeout = float(payload["timeout_seconds"])
        deadline = launch.deadline  # counted from before its artefacts were fetched
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
        contained = self._end(launch, self.kill_grace)
        returncode = proc.wait()
        out.thread.join(READER_JOIN_SECONDS)
        err.thread.join(READER_JOIN_SECONDS)
        exit_code: int | None = None
        if outcome == "completed":
            exit_code = returncode
            if returncode < 0:
                reason = f"killed by signal {_signal_name(-returncode)}"
        owner = launch.account.uid if launch.account else os.geteuid()
        structured, structured_error = read_structured(launch.workdir_fd, owner)  # type: ignore[arg-type]
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
            containment=contained,
            structured=structured,
            structured_error=structured_error,
            reboot=reboot_follows(payload, outcome, exit_code, structured_error),
        )

    # -- after a restart ----------------------------------------------------------------------

    def recover(self) -> list[dict]:
        """End and clean up what a previous run of the agent left; a result for each
        instruction it was running (outcome ``aborted``, reason naming what was killed).

        Call it at start, before anything runs; spool each result, then :meth:`finish` it.
        """
        results = []
        records = sorted(self.running_dir.glob("*.json")) if self.running_dir is not None else []
        for path in records:
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                instruction_id = record["instruction_id"]
                if not isinstance(instruction_id, str) or path.stem != instruction_id:
                    raise ValueError("not a record of this file's instruction")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("running record %s is unreadable (%s); moved aside", path.name, exc)
                with contextlib.suppress(OSError):
                    os.replace(path, path.with_suffix(".corrupt"))
                continue
            contained = self._end_leftover(record)
            self.work_root.remove_workdir(instruction_id)
            reason = "the agent restarted while this instruction ran"
            if contained["killed"]:
                reason += f"; killed {_killed_summary(contained['killed'])}"
            log.warning("%s was running when the agent stopped; %s", instruction_id, reason)
            results.append(make_result(instruction_id, "aborted", reason=reason, containment=contained))
        self.work_root.remove_all()  # work dirs without a record: nothing runs there any more
        return results

    def _end_leftover(self, record: dict) -> dict:
        """Kill what a recorded instruction left, by the method it ran under."""
        method = record.get("method") if record.get("method") in METHODS else PROCESS_GROUP
        if record.get("boot_id") != boot_id():
            return report(method, [])  # a reboot ended everything of it
        leader = record.get("leader")
        uid = record.get("uid")
        launch = _Launch(
            record["instruction_id"],
            Account("", uid, -1) if isinstance(uid, int) else None,
            method,
            since=int(record.get("since") or 0),
            cgroup=Cgroup(Path(record["cgroup"])) if method == CGROUP and record.get("cgroup") else None,
            leader=ProcessInfo(leader[0], leader[0], leader[1], -1) if isinstance(leader, list) else None,
        )
        contained = self._end(launch, self.kill_grace)
        if launch.cgroup is not None:
            launch.cgroup.remove()
        return contained


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
    """Run one instruction with a runner of its own (no running records)."""
    runner = Runner(work_root, run_as=run_as, kill_grace=kill_grace, max_stream_bytes=max_stream_bytes)
    return runner.run(payload, abort, on_start)
