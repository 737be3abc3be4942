"""An attacker running as the agent's run-as account (started by tests/agent/test_runner_race.py).

It loops until SIGTERM, against every work directory it can find (the system temp dir's
``rmm-*`` directories, the watched work roots, and the current directory of every process of
its own account), trying what a local attacker would:

- swap the script file for a symlink to ``TARGET`` (a root-owned file), or plant one before
  the script is written, so a root agent that writes or chowns that path through the link
  hands the file over;
- swap the whole work directory for a symlink;
- overwrite the script's content after the agent checked its hash, on disk or through
  ``/proc/<pid>/fd`` of the running interpreter.

On SIGTERM it prints one JSON line with how many of each it managed, and exits.
Standard library only: it runs under the system's python3 as an unprivileged account.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import sys
import tempfile
import time

SCRIPT_NAMES = ("script.sh", "script.py")
TAMPERED = b'echo "tampered content ran"\n'

stop = False
counts = {"rounds": 0, "dirs_seen": 0, "swaps": 0, "dir_swaps": 0, "tampered": 0, "fd_tampered": 0}


def on_term(signum, frame) -> None:
    global stop
    stop = True


def mine(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return st.st_uid == os.getuid() and not os.path.islink(path)


def swap_file(directory: str, target: str) -> None:
    """Replace the script (or plant one where none is yet) with a link to the target."""
    for name in SCRIPT_NAMES:
        path = os.path.join(directory, name)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            mode = None
        except OSError:
            continue
        if mode is not None and not stat.S_ISREG(mode):
            continue  # our link is already in place
        if mode is not None:
            try:
                os.rename(path, path + ".moved")
            except OSError:
                continue
            with contextlib.suppress(OSError):
                with open(path + ".moved", "r+b") as handle:
                    handle.write(TAMPERED)
                    handle.truncate()
                counts["tampered"] += 1
        with contextlib.suppress(OSError):
            os.symlink(target, path)
            counts["swaps"] += 1


def swap_dir(path: str, target: str) -> None:
    with contextlib.suppress(OSError):
        os.rename(path, path + ".moved")
        os.symlink(os.path.dirname(target), path)
        counts["dir_swaps"] += 1


def entries(directory: str) -> list[str]:
    """Paths in ``directory``; none if it cannot be listed."""
    try:
        return [os.path.join(directory, name) for name in os.listdir(directory)]
    except OSError:
        return []


def tamper_fds(pid: str) -> None:
    """Rewrite every regular file the process has open (its script, whatever it is)."""
    for link in entries(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.path.isfile(link):
                with open(link, "r+b") as handle:
                    handle.write(TAMPERED)
                counts["fd_tampered"] += 1


def attack_own_processes(target: str) -> None:
    """Through /proc: the cwd and open files of every other process of this account."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        cwd = f"/proc/{pid}/cwd"
        with contextlib.suppress(OSError):
            if os.stat(cwd).st_uid == os.getuid():
                swap_file(cwd, target)
                tamper_fds(pid)


def main() -> None:
    target, roots = sys.argv[1], sys.argv[2:]
    signal.signal(signal.SIGTERM, on_term)
    seen: set[str] = set()
    active: dict[str, float] = {}  # work dir -> when to give up on it
    temp = tempfile.gettempdir()
    while not stop:
        counts["rounds"] += 1
        for root in (temp, *roots):
            for path in entries(root):
                name = os.path.basename(path)
                if path in seen or name.endswith(".moved") or (root == temp and not name.startswith("rmm-")):
                    continue
                if mine(path):
                    seen.add(path)
                    counts["dirs_seen"] += 1
                    if len(seen) % 10 == 0:
                        swap_dir(path, target)
                    else:
                        active[path] = time.monotonic() + 1.0
        for _ in range(20):
            for path, deadline in list(active.items()):
                if time.monotonic() > deadline or not os.path.isdir(path):
                    del active[path]
                else:
                    swap_file(path, target)
        if counts["rounds"] % 10 == 0:
            attack_own_processes(target)
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
