"""A real MeshCentral (the npm package in node_modules) on 127.0.0.1: its own data and files folders in a
temporary folder (nothing written into the repository), HTTPS with the certificates it makes at first
start (its root certificate is the test client's trust anchor), no redirect or Intel AMT port, and a
broker account made a full administrator with MeshCentral's own
command line before it starts. :meth:`start_agent` runs MeshCentral's own Linux agent (the meshagent
binary that ships in the npm package) for a device group, and :func:`terminal` plays the technician's
browser in a terminal session through MeshCentral's relay, as meshctrl.js ``shell`` does."""

from __future__ import annotations

import http.cookiejar
import json
import secrets
import shutil
import socket
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parents[2]
MESHCENTRAL = ROOT / "node_modules" / "meshcentral"
FULL_ADMIN = 0xFFFFFFFF  # MeshCentral's siteadmin of a full administrator


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
        self.url = f"https://127.0.0.1:{self.port}"
        self.ca_file = self.data / "root-cert-public.crt"
        self.username = "rmm-broker"
        # not "-…": MeshCentral's command line would read a password that starts with a dash as an
        # option ('Invalid argument "4"') and make no account (one start in 64 did, in CI)
        self.password = "Broker-" + secrets.token_urlsafe(18)
        self.session_recording = session_recording
        self.process: subprocess.Popen | None = None
        self.agents: list[subprocess.Popen] = []

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
                "selfUpdate": False,
                "autoBackup": False,
                # its files folder (default: meshcentral-files beside node_modules, in the repository)
                "filesPath": str(self.folder / "meshcentral-files"),
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
        self.make_broker_account()
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
                tls = ssl.create_default_context(cafile=self.ca_file)
                with urllib.request.urlopen(f"{self.url}/", timeout=2, context=tls) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
        else:
            self.stop()
            raise RuntimeError(f"MeshCentral did not answer on {self.url}:\n{self.output()}")
        # Its web page answers before it has finished starting (it prepares its agents' binaries
        # after): on a loaded machine a login waits for that, past a test's timeout. Ready is when
        # the broker's login is answered.
        from sessions.providers.meshcentral import MeshCentralError, MeshCentralProvider

        broker = MeshCentralProvider(self.url, self.username, self.password, ca_file=str(self.ca_file), timeout=10)
        deadline = time.monotonic() + 300
        while True:
            try:
                broker.control().close()
                return self
            except MeshCentralError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    rights = self.broker_rights()
                    raise RuntimeError(
                        f"MeshCentral took no login on {self.url} (the broker's rights in its database file: "
                        f"{rights}):\n{self.output()}"
                    ) from None
                time.sleep(1)

    def make_broker_account(self) -> None:
        """The broker's account, a full administrator, made with MeshCentral's command line before it
        starts, and read back from its database (the command line says what it refused on stdout
        and exits 0)."""
        said = self.node(
            "--createaccount", self.username, "--pass", self.password, "--email", "broker@example.invalid"
        ) + self.node("--adminaccount", self.username)
        if self.broker_rights() != FULL_ADMIN:
            raise RuntimeError(f"MeshCentral's command line made no broker account:\n{said}")

    def broker_rights(self) -> int | None:
        """The broker account's site rights as MeshCentral's database file holds them (NeDB: one JSON
        document per line, a later line replacing an earlier one of the same id); None: no account."""
        database = self.data / "meshcentral.db"
        rights = None
        if database.exists():
            for line in database.read_text().splitlines():
                try:
                    document = json.loads(line)
                except ValueError:  # a line written in part
                    continue
                if document.get("_id") == f"user//{self.username}":
                    rights = None if document.get("$$deleted") else document.get("siteadmin", 0)
        return rights

    def output(self) -> str:
        return (self.folder / "meshcentral.log").read_text()

    def start_agent(self, mesh_id: str) -> None:
        """MeshCentral's agent in a folder of its own, with the group's settings file (.msh) from the
        server's /meshsettings page, connected (not installed as a service)."""
        folder = self.folder / f"agent-{len(self.agents)}"
        folder.mkdir()
        shutil.copy(MESHCENTRAL / "agents" / "meshagent_x86-64", folder / "meshagent")
        (folder / "meshagent").chmod(0o755)
        settings = self.broker_page(f"/meshsettings?id={urllib.parse.quote(mesh_id.split('/')[-1])}")
        (folder / "meshagent.msh").write_bytes(settings)
        log = open(folder / "agent.log", "w")  # noqa: SIM115 - open while it runs
        self.agents.append(subprocess.Popen(["./meshagent", "connect"], cwd=folder, stdout=log, stderr=log))

    def broker_page(self, path: str) -> bytes:
        tls = ssl.create_default_context(cafile=self.ca_file)
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(jar), urllib.request.HTTPSHandler(context=tls)
        )
        form = urllib.parse.urlencode({"action": "login", "username": self.username, "password": self.password})
        with opener.open(f"{self.url}/login", data=form.encode(), timeout=15):
            pass
        with opener.open(f"{self.url}{path}", timeout=15) as answer:
            return answer.read()

    def stop(self) -> None:
        for agent in self.agents:
            agent.terminate()
            agent.wait(timeout=10)
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def terminal(
    provider, username: str, password: str, node_id: str, keys: bytes, until: bytes, then=None
) -> tuple[str, bytes, bool]:
    """A terminal session on ``node_id`` as ``username`` through MeshCentral's relay (``/meshrelay.ashx``),
    as meshctrl.js ``shell`` opens one: the relay's first word ("cr": connected and recorded, "c":
    connected, not recorded), what the terminal showed until ``until`` came back, and whether the
    relay was closed by the server within 10 s of calling ``then()`` (when given)."""
    with provider.control(username, password) as mc:
        cookies = mc.call("authcookie")
        tunnel = secrets.token_hex(6)
        query = urllib.parse.urlencode(
            {"browser": 1, "p": 1, "nodeid": node_id, "id": tunnel, "auth": cookies["cookie"]}
        )
        with connect(f"{provider.ws_url}/meshrelay.ashx?{query}", ssl=provider.tls, max_size=None) as relay:
            agent_side = urllib.parse.urlencode({"p": 1, "nodeid": node_id, "id": tunnel, "rauth": cookies["rcookie"]})
            mc.send("msg", nodeid=node_id, type="tunnel", usage=1, value=f"*/meshrelay.ashx?{agent_side}")
            state = relay.recv(timeout=30)
            relay.send("1")  # the terminal protocol
            relay.send(keys)
            shown, deadline = b"", time.monotonic() + 30
            while until not in shown and time.monotonic() < deadline:
                try:
                    data = relay.recv(timeout=2)
                except TimeoutError:
                    continue
                shown += data if isinstance(data, bytes) else data.encode()
            closed = False
            if then is not None:
                then()
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    try:
                        relay.recv(timeout=1)
                    except TimeoutError:
                        continue
                    except ConnectionClosed:
                        closed = True
                        break
            if not closed:
                relay.send(b"exit\r")
    return state, shown, closed
