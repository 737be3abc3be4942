"""What an instruction's interpreter is started with: the signed script sealed in a memfd, a
minimal environment, and (between fork and exec) its cgroup and its account.

The interpreter reads the sealed descriptor (``/dev/fd/N``): nothing the run-as account can
touch lies between the check of the signed bytes and their execution.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from .accounts import DEFAULT_PATH, Account
from .containment import ENV_TAG
from .protocol import RESULT_PATH_ENV
from .results import RESULT_FILE

SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


class ScriptMismatch(Exception):
    """The sealed copy of the script does not hash to the signed content_sha256."""


def sealed_script(payload: dict) -> int:
    """A sealed memfd holding exactly the signed bytes, hashed again once sealed.

    Sealed against writing, growing and shrinking (and against removing the seals), the
    descriptor's content can no longer change, whoever holds it; the interpreter reads it as
    ``/dev/fd/N``. Raises :class:`ScriptMismatch` if what is in it is not what was signed.
    """
    data = payload["content"].encode("utf-8")
    fd = os.memfd_create(f"rmm-{payload['instruction_id']}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
        if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & SEALS != SEALS:
            raise ScriptMismatch("the script could not be sealed")
        digest, offset = hashlib.sha256(), 0
        while chunk := os.pread(fd, 1 << 20, offset):
            digest.update(chunk)
            offset += len(chunk)
        if digest.hexdigest() != payload["content_sha256"]:
            raise ScriptMismatch("the sealed script does not match content_sha256")
    except BaseException:
        os.close(fd)
        raise
    return fd


def environment(instruction_id: str, workdir: Path, account: Account | None, dir_fd: int) -> dict[str, str]:
    """The minimal environment: nothing of the agent's (secrets, proxies) leaks into scripts;
    where to write a structured result: in the work dir, through the descriptor the script
    inherits (the run-as account cannot reach the work dir by its path: the state dir is closed
    to it)."""
    home = str(workdir) if account is not None else os.environ.get("HOME", str(workdir))
    return {
        "PATH": os.environ.get("PATH", DEFAULT_PATH),
        "HOME": home,
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        ENV_TAG: instruction_id,
        RESULT_PATH_ENV: f"/dev/fd/{dir_fd}/{RESULT_FILE}",
    }


def artefact_paths(fetched: dict[str, int]) -> dict[str, str]:
    """Each artefact's variable -> the path of its verified file's descriptor in the script."""
    return {variable: f"/dev/fd/{fd}" for variable, fd in fetched.items()}


def preexec(procs_fd: int | None, account: Account | None) -> Callable[[], None]:
    """What the child does between fork and exec: join its cgroup, then drop to the account.

    Joining before exec is what makes containment race-free: the script and everything it
    starts are born inside. It is done first, while the child still has the agent's identity,
    which owns the cgroup; only then are the groups, gid and uid dropped, for good. (Popen's
    own ``user``/``group`` would drop them before this runs.)
    """

    def enter() -> None:
        if procs_fd is not None:
            os.write(procs_fd, b"0")
        if account is not None:
            os.setgroups([])
            os.setresgid(account.gid, account.gid, account.gid)
            os.setresuid(account.uid, account.uid, account.uid)

    return enter
