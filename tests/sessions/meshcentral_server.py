"""A real MeshCentral (the npm package in node_modules) on 127.0.0.1: its own data folder, plain HTTP
(``tlsOffload``, as behind a proxy), no redirect or Intel AMT port, and a broker account made a full
administrator with MeshCentral's own command line before it starts."""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MESHCENTRAL = ROOT / "node_modules" / "meshcentral"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MeshCentralServer:
    def __init__(self, folder: Path, session_recording: dict | None) -> None:
        self.folder = folder
        self.data = folder / "meshcentral-data"
        self.recordings = folder / "recordings"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.username = "rmm-broker"
        self.password = secrets.token_urlsafe(18)
        self.session_recording = session_recording
        self.process: subprocess.Popen | None = None

    def config(self) -> dict:
        domain: dict = {"newAccounts": False}
        if self.session_recording is not None:
            domain["sessionRecording"] = {"filepath": str(self.recordings), **self.session_recording}
        return {
            "settings": {
                "cert": "127.0.0.1",
                "port": self.port,
                "exactPorts": True,
                "redirPort": 0,
                "mpsPort": 0,
                "tlsOffload": "127.0.0.1",
                "selfUpdate": False,
                "autoBackup": False,
            },
            "domains": {"": domain},
        }

    def node(self, *args: str, timeout: float = 60) -> str:
        done = subprocess.run(
            ["node", str(MESHCENTRAL), "--datapath", str(self.data), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.folder,
        )
        return done.stdout + done.stderr

    def start(self) -> MeshCentralServer:
        assert MESHCENTRAL.is_dir(), "node_modules/meshcentral is missing: run npm ci"
        self.data.mkdir(parents=True)
        (self.data / "config.json").write_text(json.dumps(self.config(), indent=2))
        self.node("--createaccount", self.username, "--pass", self.password, "--email", "broker@example.invalid")
        self.node("--adminaccount", self.username)
        self.log = open(self.folder / "meshcentral.log", "w")  # noqa: SIM115 - open while it runs
        self.process = subprocess.Popen(
            ["node", str(MESHCENTRAL), "--datapath", str(self.data)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=self.folder,
        )
        deadline = time.monotonic() + 90  # the first start makes its certificates
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"MeshCentral exited ({self.process.returncode}):\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.url}/", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"MeshCentral did not answer on {self.url}:\n{self.output()}")

    def output(self) -> str:
        return (self.folder / "meshcentral.log").read_text()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
