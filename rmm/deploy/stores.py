"""A private PostgreSQL and a private Redis on free ports: ``make prod-up`` runs them under
``var/prod/`` when ``DATABASE_URL`` and ``REDIS_URL`` are not set, and the fault drills
(tests/faults) run, stop and kill their own."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from pathlib import Path

from rmm.deploy.processes import free_port


def _as_postgres(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """initdb and pg_ctl refuse to run as root: as root, run them as the postgres user."""
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=120, **kwargs)


class PrivatePostgres:
    """A PostgreSQL cluster of its own in ``directory`` (made with initdb the first time; as root it
    belongs to the postgres account, which must be able to reach it), on a free port."""

    def __init__(self, directory: Path):
        [self.bin] = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1:] or [None]
        if not self.bin:
            raise RuntimeError("PostgreSQL's server binaries are not installed (apt-get install postgresql)")
        self.dir = directory
        self.data, self.log = directory / "data", directory / "postgres.log"
        self.port = free_port()
        if not (self.data / "PG_VERSION").exists():
            directory.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                shutil.chown(directory, "postgres", "postgres")
            _as_postgres([f"{self.bin}/initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync"])

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """The server in the background, in a session of its own (pg_ctl detaches it)."""
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        _as_postgres([f"{self.bin}/pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start"])

    def stop(self, mode: str = "fast") -> None:
        """``fast``: clients are cut off, as when the database is shut down; ``immediate``: a crash."""
        _as_postgres([f"{self.bin}/pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop"])

    def pid(self) -> int:
        """The postmaster's pid (the first line of its pid file), also its session's id."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def running(self) -> bool:
        done = subprocess.run([f"{self.bin}/pg_ctl", "-D", str(self.data), "status"], capture_output=True)
        return done.returncode == 0

    def close(self) -> None:
        """Stopped at once, and its files removed."""
        if self.running():
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRedis:
    """A redis-server of its own on a free port, keeping nothing on disk, in a session of its own."""

    def __init__(self, directory: Path):
        self.port, self.dir, self.proc = free_port(), directory, None
        self.url = f"redis://127.0.0.1:{self.port}/0"
        directory.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        with open(self.dir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        ping = ["redis-cli", "-p", str(self.port), "ping"]
        deadline = time.monotonic() + 30
        while subprocess.run(ping, capture_output=True).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {(self.dir / 'redis.log').read_text()[-2000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.kill()
