"""Containing an instruction: everything it started ends when it ends.

Three methods, best first (docs/agent.md, "Containment"):

- ``cgroup``: a cgroup v2 per instruction, joined by the child before it execs, so nothing the
  script starts can leave it (``setsid`` included); ended with ``cgroup.kill``. Under systemd
  it is a child of the agent's own cgroup (the unit needs ``Delegate=yes``); otherwise
  ``<cgroup2 mount>/rmm/<instruction>``.
- ``account``: no usable cgroup v2, but the instruction runs as the dedicated run-as account:
  every process of that account started since the instruction began is killed, except those
  that belong to another instruction still running.
- ``process_group``: neither (a non-root agent without a delegated cgroup, or a privileged
  instruction without cgroups): the instruction's process group, and any process still
  carrying its ``RMM_INSTRUCTION_ID``, are killed. A child that leaves its session and clears
  its environment escapes this one.

Every signal goes through a pidfd opened after the process was identified, so a pid reused in
between is never hit.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .protocol import CONTAINMENT_METHODS as METHODS

CGROUP, ACCOUNT, PROCESS_GROUP = METHODS

CGROUP_DIR_NAME = "rmm"
MAX_REPORTED = 50  # processes named in a result; the rest are counted in "omitted"
MAX_COMMAND_CHARS = 300
KILL_ROUNDS = 50  # of SIGKILL sweeps, for the methods that cannot kill atomically
POLL_SECONDS = 0.02
SETTLE_SECONDS = 5.0  # to wait for a killed cgroup to empty
ENV_TAG = "RMM_INSTRUCTION_ID"

PROC = Path("/proc")

log = logging.getLogger("rmm_agent")


@dataclass(frozen=True)
class ProcessInfo:
    """One live process as /proc shows it."""

    pid: int
    pgid: int
    start: int  # clock ticks since boot
    uid: int

    def command(self) -> str:
        """The command line (or ``[comm]``), bounded, for the result."""
        try:
            raw = (PROC / str(self.pid) / "cmdline").read_bytes()
        except OSError:
            raw = b""
        text = raw.replace(b"\0", b" ").decode("utf-8", errors="replace").strip()
        if not text:
            try:
                text = "[" + (PROC / str(self.pid) / "comm").read_text().strip() + "]"
            except OSError:
                text = "?"
        return text[:MAX_COMMAND_CHARS]


def boot_ticks() -> int:
    """Now, in the unit of /proc/<pid>/stat's start time (clock ticks since boot)."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK"))


def boot_id() -> str:
    """This boot's id: processes and cgroups recorded under another boot are long gone."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_info(pid: int) -> ProcessInfo | None:
    """A live (not zombie) process, or None."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
        status = (PROC / str(pid) / "status").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    #  cutime cstime priority nice num_threads itrealvalue starttime ..." -- comm may hold ") ".
    fields = raw[raw.rfind(")") + 2 :].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    uid = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:")), -1)
    return ProcessInfo(pid=pid, pgid=int(fields[2]), start=int(fields[19]), uid=uid)


def all_processes() -> Iterable[ProcessInfo]:
    """Every live process but this one."""
    me = os.getpid()
    for entry in os.listdir(PROC):
        if entry.isdigit() and int(entry) != me:
            info = process_info(int(entry))
            if info is not None:
                yield info


def environment_tag(pid: int) -> str | None:
    """The process's ``RMM_INSTRUCTION_ID`` as it was exec'd, or None."""
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    prefix = ENV_TAG.encode() + b"="
    for item in raw.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix) :].decode("utf-8", errors="replace")
    return None


def signal_process(info: ProcessInfo, signum: int, still: Callable[[int], bool] | None = None) -> bool:
    """Send ``signum`` to exactly the process ``info`` describes; False if it is gone.

    The pidfd pins the process: once it is open and the pid still shows the same start time
    (and ``still`` agrees), the signal cannot reach another process that reused the pid.
    """
    try:
        pidfd = os.pidfd_open(info.pid)
    except ProcessLookupError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.ENOSYS, errno.EPERM):
            return False
        pidfd = None
    try:
        current = process_info(info.pid)
        if current is None or current.start != info.start or (still is not None and not still(info.pid)):
            return False
        if pidfd is None:
            os.kill(info.pid, signum)
        else:
            signal.pidfd_send_signal(pidfd, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)


def named(found: Iterable[ProcessInfo]) -> list[dict]:
    """``{"pid", "command"}`` of each process, read before it is signalled (after, it is gone)."""
    return [{"pid": info.pid, "command": info.command()} for info in found]


def report(method: str, killed: list[dict]) -> dict:
    """The result's ``containment`` field: the method, and the processes that had to be killed."""
    unique = list({item["pid"]: item for item in killed}.values())
    document: dict = {"method": method, "killed": unique[:MAX_REPORTED]}
    if len(unique) > MAX_REPORTED:
        document["omitted"] = len(unique) - MAX_REPORTED
    return document


# -- cgroup v2 --------------------------------------------------------------------------------


def _unescape(field: str) -> str:
    """Mount info escapes space, tab, newline and backslash as octal."""
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def cgroup2_mount() -> tuple[Path, str] | None:
    """(mount point, root within the hierarchy) of a cgroup v2 mount, found in mountinfo.

    Hybrid layouts mount it under the v1 tree (e.g. /sys/fs/cgroup/unified), so it is looked
    up, never assumed.
    """
    try:
        lines = (PROC / "self" / "mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        before, sep, after = line.partition(" - ")
        fields = before.split()
        if sep and after.split()[:1] == ["cgroup2"] and len(fields) >= 5:
            return Path(_unescape(fields[4])), _unescape(fields[3])
    return None


def own_cgroup() -> str | None:
    """This process's cgroup v2 path (the ``0::`` line of /proc/self/cgroup)."""
    try:
        lines = (PROC / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return line[3:].strip()
    return None


def under_systemd() -> bool:
    """Whether systemd is the init system (sd_booted's test)."""
    return Path("/run/systemd/system").is_dir()


def cgroup_parent() -> Path | None:
    """Where this agent may create its instructions' cgroups, or None.

    Under systemd: ``rmm`` in the agent's own cgroup (delegated to it by ``Delegate=yes``).
    Otherwise ``rmm`` at the root of the cgroup v2 mount. Usable only if the agent can create
    cgroups there and move processes into them.
    """
    mount = cgroup2_mount()
    own = own_cgroup()
    if mount is None or own is None:
        return None
    mount_point, mount_root = mount
    relative = own if mount_root == "/" else own.removeprefix(mount_root)
    own_dir = mount_point / relative.lstrip("/")
    base = own_dir if under_systemd() and relative.strip("/") else mount_point
    parent = base / CGROUP_DIR_NAME
    try:
        parent.mkdir(exist_ok=True)
    except OSError:
        return None
    # Moving a process needs write access to the destination's and the common ancestor's
    # cgroup.procs; the ancestor is the agent's own cgroup or above it.
    if not (os.access(parent, os.W_OK) and os.access(own_dir / "cgroup.procs", os.W_OK)):
        return None
    return parent


class Cgroup:
    """One instruction's cgroup: created empty, joined by the child before exec, killed, removed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def create(self) -> None:
        """Create it; raises OSError (an existing one is refused, not shared)."""
        self.path.mkdir()

    def open_procs(self) -> int:
        """A descriptor on ``cgroup.procs``: writing ``0`` moves the writer into the cgroup."""
        return os.open(self.path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)

    def pids(self) -> list[int]:
        """Processes in it now (empty if it is gone)."""
        try:
            return [int(line) for line in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def populated(self) -> bool:
        """Whether any live process is in it."""
        try:
            events = (self.path / "cgroup.events").read_text()
        except OSError:
            return False
        return "populated 1" in events

    def members(self) -> list[ProcessInfo]:
        """The live processes in it, as /proc shows them."""
        return [info for info in map(process_info, self.pids()) if info is not None]

    def contains(self, pid: int) -> bool:
        """Whether ``pid`` is in it (checked after its pidfd is open)."""
        return pid in self.pids()

    def end(self, grace: float) -> list[dict]:
        """SIGTERM everything in it, wait up to ``grace``, then kill the whole cgroup; returns
        the processes that were still there, named."""
        members = self.members()
        found = named(members)
        for info in members:
            signal_process(info, signal.SIGTERM, self.contains)
        deadline = time.monotonic() + grace
        while self.populated() and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        if self.populated():
            found += named(self.members())
            self.kill()
        return found

    def kill(self) -> None:
        """SIGKILL every process in it at once (``cgroup.kill``, Linux 5.14), or sweep by pid."""
        kill_file = self.path / "cgroup.kill"
        if kill_file.exists():
            with contextlib.suppress(OSError):
                kill_file.write_text("1")
        else:
            for _round in range(KILL_ROUNDS):
                members = self.members()
                if not members:
                    break
                for info in members:
                    signal_process(info, signal.SIGKILL, self.contains)
        deadline = time.monotonic() + SETTLE_SECONDS
        while self.populated() and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)

    def remove(self) -> None:
        """Remove the (empty) cgroup; one that is gone already is fine, one that cannot be
        removed is logged and left (it holds no process the kill could reach)."""
        try:
            self.path.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove cgroup %s: %s", self.path, exc)


# -- the fallbacks ----------------------------------------------------------------------------


def sweep(match: Callable[[ProcessInfo], bool], grace: float) -> list[dict]:
    """SIGTERM every process ``match`` selects, wait up to ``grace``, then SIGKILL in rounds
    until none is left (what forks meanwhile is caught by the next round); returns them named."""
    first = [info for info in all_processes() if match(info)]
    found = named(first)
    for info in first:
        signal_process(info, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while first and time.monotonic() < deadline:
        if not any(match(info) for info in all_processes()):
            return found
        time.sleep(POLL_SECONDS)
    for _round in range(KILL_ROUNDS):
        left = [info for info in all_processes() if match(info)]
        if not left:
            break
        found += named(left)
        for info in left:
            signal_process(info, signal.SIGKILL)
        time.sleep(POLL_SECONDS)
    return found
