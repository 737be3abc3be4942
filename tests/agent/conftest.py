"""Shared fixtures for agent tests: a signing key, instruction builders, a fake server."""

from __future__ import annotations

import base64
import json
import os
import pwd
import socket
import ssl
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from deploy.tls import certificates
from rmm_agent import keyring
from rmm_agent.accounts import DEFAULT_RUN_AS, Account, lookup_account
from rmm_agent.protocol import MAX_BODY_BYTES, canonical_json, result_hash, sha256_hex

REPO_ROOT = Path(__file__).resolve().parents[2]
AGENT_ID = "7f9c2b1e-0000-4000-8000-000000000001"
ASSET_ID = "7f9c2b1e-0000-4000-8000-0000000000a5"
SECRET = "agent-secret-value"
TOKEN = "enroll-me"


def require_root(why: str) -> None:
    """Skip without root, except under CI, where a test that cannot run is a failure."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail(f"{why} needs root (CI is set, so this may not be skipped)", pytrace=False)
        pytest.skip(f"{why} needs root")


@pytest.fixture(scope="session", autouse=True)
def _run_as_account_installed() -> None:
    """A root agent refuses to enroll without its run-as account: create it with the agent's
    own install step, as an operator does."""
    if os.geteuid() != 0:
        return
    try:
        pwd.getpwnam(DEFAULT_RUN_AS)
    except KeyError:
        done = subprocess.run(
            [*AGENT_CMD, "install-account"], env=agent_env(), capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr


@pytest.fixture(scope="session")
def run_as_account() -> Account:
    """The agent's dedicated run-as account (root only)."""
    require_root("dropping to the run-as account")
    return lookup_account(DEFAULT_RUN_AS)


@pytest.fixture
def own_account():
    """A run-as account of this test alone, made by the agent's install step, removed after.

    The account fallback kills every process of its account started since an instruction
    began, so tests that use it (possibly in parallel) must not share one.
    """
    require_root("creating an account")
    name = f"rmm-t{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        [*AGENT_CMD, "install-account", "--name", name], env=agent_env(), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    yield lookup_account(name)
    subprocess.run(["userdel", name], capture_output=True, check=False)


def raw_public_key(private_key: Ed25519PrivateKey) -> bytes:
    """The 32 raw bytes the agent is given at enrollment."""
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def make_payload(content: str = "echo hello\n", **overrides: object) -> dict:
    """A well-formed instruction payload for AGENT_ID, valid for an hour."""
    payload = {
        "instruction_id": str(uuid.uuid4()),
        "agent_id": AGENT_ID,
        "interpreter": "sh",
        "content": content,
        "content_sha256": sha256_hex(content.encode("utf-8")),
        "arguments": [],
        "timeout_seconds": 30,
        "privileged": False,
        "not_after": (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
    }
    payload.update(overrides)
    return payload


def sign(payload: dict | str, private_key: Ed25519PrivateKey) -> dict:
    """An envelope as the server sends it: payload text, base64 signature, the signing key's id."""
    text = payload if isinstance(payload, str) else canonical_json(payload).decode()
    signature = private_key.sign(text.encode("utf-8"))
    return {
        "payload": text,
        "signature": base64.b64encode(signature).decode(),
        "key_id": keyring.key_id(raw_public_key(private_key)),
    }


def trusted(*private_keys: Ed25519PrivateKey) -> dict[str, bytes]:
    """The keys an agent trusts, by id, as it holds them."""
    return {keyring.key_id(raw_public_key(key)): raw_public_key(key) for key in private_keys}


@pytest.fixture(scope="session")
def server_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def fail_writes_to(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """The disk is full, for ``path`` only: the agent's atomic writes of it fail from now on."""
    from rmm_agent import state as state_module

    real_write = state_module.atomic_write_json

    def failing_write(target: Path, obj: object, mode: int = 0o600) -> None:
        if target == path:
            raise OSError(28, "No space left on device")
        real_write(target, obj, mode)

    monkeypatch.setattr(state_module, "atomic_write_json", failing_write)


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def agent_env() -> dict[str, str]:
    """Environment for running ``python -m rmm_agent`` from the repository."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


AGENT_CMD = [sys.executable, "-m", "rmm_agent"]


@dataclass
class FakeServer:
    """Just enough of the server's agent API to drive the real agent end to end.

    Its answers (status codes, bodies, headers) are the real server's: tests/agent/test_contract.py
    runs the same behaviours against both, so a difference fails there."""

    private_key: Ed25519PrivateKey
    interval: int = 1
    url: str = ""
    requests: list = field(default_factory=list)
    results: dict = field(default_factory=dict)
    pending: list = field(default_factory=list)
    abort: list = field(default_factory=list)
    facts_required: bool = False
    facts_wanted: list = field(default_factory=list)  # namespaces wanted in full, as the server asks
    # path -> (status, body, headers) to answer instead of the normal behaviour
    override: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    ca_file: str | None = None
    # Secret rotation as the real server does it: while ``rotate`` is set, every heartbeat made
    # with the current secret is answered with a fresh ``new_secret`` (the latest becomes
    # ``pending_secret``); both work until the agent first calls with the pending one.
    secret: str = SECRET
    rotate: bool = False
    pending_secret: str | None = None
    issued_secrets: list = field(default_factory=list)
    # Like a proxy's body limit: larger requests get 413 with an HTML page.
    max_body: int | None = None
    # A signing-key update to send in every heartbeat answer, as the real server does until the
    # agent reports holding the keys (see tests/agent/test_keyring.py).
    signing_keys: dict | None = None
    # Instruction ids handed out in heartbeats: a result for any other is answered 404, as the
    # real server answers a result for an instruction that is not this agent's.
    issued: set = field(default_factory=set)
    # The release key pinned at enrollment (tests/agent/test_self_update.py), and the files the
    # agent may GET (path -> bytes), as the server's release download.
    release_key: Ed25519PrivateKey | None = None
    files: dict = field(default_factory=dict)

    def heartbeats(self) -> list[dict]:
        with self.lock:
            return [body for path, _, body in self.requests if path.endswith("/heartbeat/")]

    def calls(self, path_suffix: str = "") -> list[tuple[str, str, dict]]:
        """(path, secret used, body) of each authenticated call, in order."""
        with self.lock:
            return [
                (path, headers.get("authorization", "").partition(":")[2], body)
                for path, headers, body in self.requests
                if path.endswith(path_suffix) and path != "/api/v1/agent/enroll/"
            ]

    def _authenticate(self, headers: dict) -> bool:
        """Like the server: the current secret, or the pending one, which then replaces it."""
        header = headers.get("authorization", "")
        if header == f"Agent {AGENT_ID}:{self.secret}":
            return True
        if self.pending_secret and header == f"Agent {AGENT_ID}:{self.pending_secret}":
            self.secret, self.pending_secret, self.rotate = self.pending_secret, None, False
            return True
        return False

    def answer(self, path: str, headers: dict, body: dict) -> tuple[int, dict, dict]:
        with self.lock:
            self.requests.append((path, headers, body))
            if path in self.override:
                return self.override[path]
            if path == "/api/v1/agent/enroll/":
                if body.get("token") != TOKEN:
                    return 403, {"detail": "Enrollment refused: unknown enrollment token."}, {}
                public = base64.b64encode(raw_public_key(self.private_key)).decode()
                key_id = keyring.key_id(raw_public_key(self.private_key))
                return (
                    201,
                    {
                        "agent_id": AGENT_ID,
                        "asset_id": ASSET_ID,
                        "secret": SECRET,
                        "server_public_key": public,
                        "server_key_id": key_id,
                        "server_keys": {key_id: public},
                        "heartbeat_interval": self.interval,
                        **({"release_keys": trusted_b64(self.release_key)} if self.release_key else {}),
                    },
                    {},
                )
            if not self._authenticate(headers):
                return 401, {"detail": "Agent credential missing, wrong or revoked."}, {"WWW-Authenticate": "Agent"}
            if path == "/api/v1/agent/heartbeat/":
                instructions, self.pending = self.pending, []
                self.issued.update(_instruction_id(envelope) for envelope in instructions)
                answer = {
                    "interval": self.interval,
                    "instructions": instructions,
                    "abort": list(self.abort),
                    "facts_required": self.facts_required,
                    "facts_wanted": list(self.facts_wanted),
                }
                if self.signing_keys is not None:
                    answer["signing_keys"] = self.signing_keys
                if self.rotate:
                    self.pending_secret = f"rotated-{uuid.uuid4().hex}"
                    self.issued_secrets.append(self.pending_secret)
                    answer["new_secret"] = self.pending_secret
                return 200, answer, {}
            if path == "/api/v1/agent/results/":
                if body.get("hash") != result_hash(body):
                    return 400, {"hash": ["Does not match the result's content."]}, {}
                if body.get("instruction_id") not in self.issued:
                    return 404, {"detail": "No such instruction for this agent."}, {}
                known = self.results.get(body["instruction_id"])
                if known is not None and known["hash"] == body["hash"]:
                    return 200, {"status": "already_received"}, {}
                if known is not None:
                    return 409, {"status": "conflict", "detail": "A different result was already received."}, {}
                self.results[body["instruction_id"]] = body
                return 201, {"status": "accepted"}, {}
            return 404, {"detail": "not found"}, {}


def _instruction_id(envelope: object) -> str | None:
    """The instruction id an envelope's payload names (None when it names none)."""
    try:
        return json.loads(envelope["payload"])["instruction_id"]  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return None


def trusted_b64(*private_keys: Ed25519PrivateKey) -> dict[str, str]:
    """Keys by id as an enrollment answer gives them (base64 public keys)."""
    return {kid: base64.b64encode(raw).decode() for kid, raw in trusted(*private_keys).items()}


def _serve(server_state: FakeServer, ssl_context: ssl.SSLContext | None = None) -> ThreadingHTTPServer:
    """Start an HTTP(S) server in a thread that answers through ``server_state``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            headers = {key.lower(): value for key, value in self.headers.items()}
            with server_state.lock:
                allowed = server_state._authenticate(headers)
                data = server_state.files.get(self.path)
            status = 401 if not allowed else 404 if data is None else 200
            data = data if status == 200 else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if server_state.max_body is not None and length > server_state.max_body:
                self.rfile.read(length)
                with server_state.lock:
                    server_state.requests.append((self.path, {}, {"refused_bytes": length}))
                page = b"<html><body><h1>413 Request Entity Too Large</h1></body></html>"
                self.send_response(413)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)
                return
            headers = {key.lower(): value for key, value in self.headers.items()}
            if length > MAX_BODY_BYTES:  # the server's own bound, answered in JSON
                self.rfile.read(length)
                status, extra = 413, {}
                answer = {
                    "detail": f"The body is larger than the agent protocol allows ({MAX_BODY_BYTES} bytes).",
                    "max_bytes": MAX_BODY_BYTES,
                }
            else:
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    body = None
                if isinstance(body, dict):
                    status, answer, extra = server_state.answer(self.path, headers, body)
                else:
                    status, answer, extra = 400, {"detail": "The body must be a JSON object."}, {}
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    scheme = "http"
    if ssl_context is not None:
        httpd.socket = ssl_context.wrap_socket(httpd.socket, server_side=True)
        scheme = "https"
    server_state.url = f"{scheme}://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return httpd


@pytest.fixture
def fake_server(server_key: Ed25519PrivateKey):
    """A running plain-HTTP FakeServer on 127.0.0.1; stopped after the test."""
    server_state = FakeServer(private_key=server_key)
    httpd = _serve(server_state)
    yield server_state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def https_fake_server(server_key: Ed25519PrivateKey, tmp_path: Path):
    """A FakeServer behind TLS with a certificate for 127.0.0.1 from a private CA; ``ca_file`` is
    the CA's PEM."""
    ca_path, cert_path, key_path = certificates(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    server_state = FakeServer(private_key=server_key)
    server_state.ca_file = str(ca_path)
    httpd = _serve(server_state, context)
    yield server_state
    httpd.shutdown()
    httpd.server_close()
