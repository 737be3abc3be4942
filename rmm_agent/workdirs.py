"""The work root and each instruction's dirs in it: its work dir (the script's cwd) and its
fetched artefacts. All are made and removed through descriptors inside a work root that belongs
to the agent and that no one else can write, so the run-as account can neither rename them nor
make the agent act on a path it chose.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from .accounts import Account
from .artefacts import FetchFailed

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# In the work root: each running instruction's fetched artefacts, in a dir of the agent's own.
# (An instruction id never starts with a dot, so it is no instruction's work dir.)
ARTEFACTS_DIR = ".artefacts"


class WorkRoot:
    """The dir under which every instruction of one runner gets its own."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()

    def _open(self) -> int:
        """The work root as a descriptor: a real directory (no link) of the agent's account
        that no one else may write, so no other account can rename or add entries in it."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, DIR_FLAGS)
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            os.close(fd)
            raise OSError(f"{self.path} must belong to the agent's account and be writable by it alone")
        return fd

    def make_workdir(self, instruction_id: str, account: Account | None) -> Path:
        """A fresh private dir for one instruction, the cwd of its script.

        Created and handed over through descriptors (``mkdir``/``open`` relative to the work
        root's descriptor, ``O_NOFOLLOW``, ``fchown``): no path the run-as account controls
        is ever followed. The account can use it only as its cwd when the state dir is
        closed to it.
        """
        root_fd = self._open()
        try:
            os.mkdir(instruction_id, 0o700, dir_fd=root_fd)
            fd = os.open(instruction_id, DIR_FLAGS, dir_fd=root_fd)
            try:
                os.fchmod(fd, 0o700)
                if account is not None:
                    os.fchown(fd, account.uid, account.gid)
            finally:
                os.close(fd)
        finally:
            os.close(root_fd)
        return self.path / instruction_id

    def make_artefacts_dir(self, instruction_id: str) -> Path:
        """A fresh ``.artefacts/<id>`` for an instruction's fetched artefacts (the agent's: no
        other account can reach it); :class:`FetchFailed` if the holder is not the agent's."""
        root_fd = self._open()
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(ARTEFACTS_DIR, 0o700, dir_fd=root_fd)
            holder = os.open(ARTEFACTS_DIR, DIR_FLAGS, dir_fd=root_fd)
            try:
                if os.fstat(holder).st_uid != os.geteuid():
                    raise FetchFailed(f"{self.path / ARTEFACTS_DIR} does not belong to the agent")
                os.mkdir(instruction_id, 0o700, dir_fd=holder)
            finally:
                os.close(holder)
        finally:
            os.close(root_fd)
        return self.path / ARTEFACTS_DIR / instruction_id

    def remove_artefacts(self, instruction_id: str) -> None:
        """Delete an instruction's fetched artefacts (none: nothing to do)."""
        with contextlib.suppress(OSError):
            fd = os.open(self.path / ARTEFACTS_DIR, DIR_FLAGS)
            try:
                shutil.rmtree(instruction_id, dir_fd=fd, ignore_errors=True)
            finally:
                os.close(fd)

    def remove_workdir(self, instruction_id: str) -> None:
        """Remove a work dir without following any link the script left in it."""
        try:
            root_fd = os.open(self.path, DIR_FLAGS)
        except OSError:
            return
        try:
            shutil.rmtree(instruction_id, dir_fd=root_fd, ignore_errors=True)
        finally:
            os.close(root_fd)

    def remove_all(self) -> None:
        """Remove every dir in it; only when nothing runs there any more (at start)."""
        if self.path.is_dir():
            for child in self.path.iterdir():
                self.remove_workdir(child.name)
