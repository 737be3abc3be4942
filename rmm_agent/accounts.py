"""Which account an instruction runs as, and which interpreter that account can execute.

A root agent drops unprivileged instructions to a dedicated account (least privilege); what it
runs must then be reachable by that account, which root's own checks would not show.
"""

from __future__ import annotations

import os
import pwd
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_RUN_AS = "rmm-run"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SYSTEM_BIN_DIRS = ("/usr/local/bin", "/usr/bin", "/bin")


@dataclass(frozen=True)
class Account:
    """The unprivileged account a process is dropped to."""

    name: str
    uid: int
    gid: int


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
