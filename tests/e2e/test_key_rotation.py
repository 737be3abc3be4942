"""Signing-key rotation between the real server, the real agent and the offline verifier.

Instruction keys: an agent enrolled under K1 learns K2 from the heartbeat, stores it, then runs
what K2 signs; an agent asleep through two rotations catches up through the chain K1→K2→K3; a
forged statement (injected on the network path) is refused; a retired key is dropped. Evidence
keys: anchors and a bundle made before a rotation still verify after it, online and offline. Keys
from the environment: a server whose private keys come only from RMM_SIGNING_KEYS runs a job.

Each test here has a server of its own: rotating and retiring keys must not touch the agents of
the other end-to-end tests.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
import zipfile

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rmm.keys import store
from rmm_agent import keyring
from tests.e2e.flows import agent_once, finished_export, make_world, publish, run_job
from tests.e2e.server import Server


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory, psa_receiver):
    srv = Server(
        tmp_path_factory.mktemp("keys"),
        {"RMM_PSA_WEBHOOK_URL": psa_receiver.url, "RMM_PSA_WEBHOOK_SECRET": psa_receiver.secret},
    ).start()
    yield srv
    srv.stop()


def rotate(server, purpose: str) -> str:
    done = server.manage("rmm_signing_key", "rotate", "--purpose", purpose)
    return done.stdout.split("key id ")[1].split(",")[0]


def server_keys(w) -> set[str]:
    return set(json.loads((w["state"] / "config.json").read_text())["server_keys"])


def signed_with(server, job_id: str) -> str:
    """The key id of a job's instruction, read as a database owner would."""
    sql, value = "SELECT key_id FROM engine_instruction WHERE job_id = ?", uuid.UUID(job_id).hex  # SQLite
    if server.pg_admin_url:
        sql, value = sql.replace("?", "%s"), job_id
    with server.db() as conn:
        cursor = conn.cursor()
        cursor.execute(sql, [value])
        return cursor.fetchone()[0]


def job_done(server, w, content: str) -> dict:
    """A job for the world's agent: its id, once the agent has run it (``agent_once`` is the caller's)."""
    script = publish(server, w, content)
    return run_job(server, w, script["id"])


def status_of(server, w, job) -> dict:
    return server.request("GET", f"/api/v1/script-jobs/{job['id']}/", token=w["psa"]).json()


def second_agent(server, w) -> dict:
    """Another enrolled agent in the same site, with the same people."""
    hostname = f"e2e-{uuid.uuid4().hex[:6]}"
    state, config = server.enroll(w["site"], hostname)
    assets = server.request("GET", f"/api/v1/assets/?hostname={hostname}", token=w["tech"]).json()["results"]
    return {**w, "state": state, "config": config, "asset": assets[0]["id"], "hostname": hostname}


class Forger(http.server.ThreadingHTTPServer):
    """Someone on the network path of a plain-http agent: passes every call on to the real server
    and adds to each heartbeat answer a rotation from the server's newest key to a key of its own
    (it has only the server's public key, so it signs with another), and a retirement of the
    server's key signed by its own."""

    def __init__(self, target: str, server_key: bytes):
        forger, evil = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
        text = keyring.rotation_payload(
            "instructions", 99, server_key, store.raw_public(evil), "2026-01-01T00:00:00Z", "now"
        )
        retirement = keyring.retirement_payload("instructions", keyring.key_id(server_key), "now")
        self.injected = {
            "rotations": [
                {
                    "payload": text,
                    "key_id": keyring.key_id(server_key),
                    "signature": keyring.b64(forger.sign(text.encode())),
                    "new_key_signature": keyring.b64(evil.sign(text.encode())),
                }
            ],
            "retirements": [
                {
                    "payload": retirement,
                    "key_id": keyring.key_id(store.raw_public(evil)),
                    "signature": keyring.b64(evil.sign(retirement.encode())),
                }
            ],
        }
        self.evil_id, self.target = keyring.key_id(store.raw_public(evil)), target
        super().__init__(("127.0.0.1", 0), _ForgerHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ForgerHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - the name http.server calls
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        request = urllib.request.Request(self.server.target + self.path, data=body, method="POST")
        for name in ("Authorization", "Content-Type", "User-Agent"):
            if self.headers.get(name):
                request.add_header(name, self.headers[name])
        try:
            with urllib.request.urlopen(request, timeout=60) as resp:
                status, answer = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, answer = err.code, err.read()
        if self.path.endswith("/heartbeat/") and status == 200:
            data = json.loads(answer)
            real = data.get("signing_keys") or {"rotations": [], "retirements": []}
            data["signing_keys"] = {
                "rotations": real["rotations"] + self.server.injected["rotations"],
                "retirements": real["retirements"] + self.server.injected["retirements"],
            }
            answer = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def test_agents_follow_instruction_key_rotations_and_refuse_forged_ones(keyed_server):
    server = keyed_server
    awake = make_world(server)
    asleep = second_agent(server, awake)
    [k1] = server_keys(awake)
    assert server_keys(asleep) == {k1}

    # K2, made by another process while the server runs: its workers learn it at the next check-in.
    k2 = rotate(server, "instructions")
    first = job_done(server, awake, "echo queued before the agent knew K2\n")
    assert signed_with(server, first["id"]) == k1  # the agent has not acknowledged K2 yet
    done = agent_once(server, awake)
    assert f"server signing keys updated: trusting {k2}" in done.stderr
    assert server_keys(awake) == {k1, k2}
    assert status_of(server, awake, first)["status"] == "succeeded"

    agent_once(server, awake)  # its heartbeat says it holds K2: from now on its instructions use K2
    second = job_done(server, awake, "echo signed with K2\n")
    assert signed_with(server, second["id"]) == k2
    agent_once(server, awake)
    assert status_of(server, awake, second)["status"] == "succeeded"
    assert status_of(server, awake, second)["result"]["stdout"] == "signed with K2\n"

    # K3: the agent that slept through both rotations catches up through K1→K2→K3.
    k3 = rotate(server, "instructions")
    late = job_done(server, asleep, "echo the sleeper wakes\n")
    assert signed_with(server, late["id"]) == k1
    done = agent_once(server, asleep)
    assert f"server signing keys updated: trusting {', '.join(sorted([k2, k3]))}" in done.stderr
    assert server_keys(asleep) == {k1, k2, k3}
    assert status_of(server, asleep, late)["status"] == "succeeded"

    # A forged rotation (and retirement) on the network path: refused, logged, nothing changes,
    # while the real K3 that came in the same answer is learnt.
    config_path = awake["state"] / "config.json"
    config = json.loads(config_path.read_text())
    forger = Forger(
        server.url,
        server_key=base64.b64decode(json.loads(asleep["state"].joinpath("config.json").read_text())["server_keys"][k3]),
    )
    config_path.write_text(json.dumps({**config, "server": forger.url}))
    try:
        done = agent_once(server, awake)
    finally:
        forger.shutdown()
        config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "server": server.url}))
    assert f"refused a signing key statement from the server: rotation: the signature of key {k3} does not verify" in (
        done.stderr
    )
    assert (
        f"refused a signing key statement from the server: retirement: signed by key {forger.evil_id}, "
        "which this verifier does not trust" in done.stderr
    )
    assert server_keys(awake) == {k1, k2, k3}
    assert forger.evil_id not in server_keys(awake)

    # Retiring K1 waits for the agents that still rely on it, then they drop it.
    refused = server.manage("rmm_signing_key", "retire", "--purpose", "instructions", "--key-id", k1, check=False)
    assert refused.returncode != 0 and "have not acknowledged a newer key" in refused.stderr
    agent_once(server, asleep)
    assert "agents at this key: 0" in server.manage("rmm_signing_key", "list", "--purpose", "instructions").stdout
    server.manage("rmm_signing_key", "retire", "--purpose", "instructions", "--key-id", k1)
    for w in (awake, asleep):
        done = agent_once(server, w)
        assert f"retired {k1}" in done.stderr
        assert server_keys(w) == {k2, k3}
    last = job_done(server, awake, "echo after the retirement\n")
    assert signed_with(server, last["id"]) == k3
    agent_once(server, awake)
    assert status_of(server, awake, last)["status"] == "succeeded"


def export_bundle(server, w, token: str, tmp_path) -> tuple[str, object]:
    r = server.request("POST", "/api/v1/evidence/exports/", {"site": w["site"]}, token)
    assert r.status == 202, r.body
    export_id = r.json()["id"]
    status = finished_export(server, export_id, token)
    assert status["status"] == "done", status
    bundle = server.request("GET", status["download"], token=token)
    with zipfile.ZipFile(io.BytesIO(bundle.body)) as zf:
        zf.extractall(tmp_path)
    return export_id, tmp_path / f"rmm-evidence-{export_id}"


def verify_offline(folder, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-I", "verify.py", *args], cwd=folder, capture_output=True, text=True, timeout=120
    )


def test_evidence_signed_before_a_rotation_still_verifies(keyed_server, tmp_path):
    server = keyed_server
    w = make_world(server)
    compliance = server.token(f"comp-{uuid.uuid4().hex[:6]}", "compliance")
    job = job_done(server, w, "echo evidence under the first key\n")
    agent_once(server, w)
    assert status_of(server, w, job)["status"] == "succeeded"
    old = server.request("GET", "/api/v1/evidence/signing-key/", token=compliance).json()
    _, before = export_bundle(server, w, compliance, tmp_path / "before")

    new_id = rotate(server, "evidence")
    assert server.manage("anchor_history").stdout.split("key ")[-1].strip() != old["fingerprint"]
    new = server.request("GET", "/api/v1/evidence/signing-key/", token=compliance).json()
    assert new["key_id"] == new_id != old["key_id"]
    assert [k["key_id"] for k in new["keys"]][-2:] == [old["key_id"], new_id]

    # Retired, the old key's private half is deleted; online, every anchor, signed by either key,
    # still checks out, the old ones through the rotation statement.
    retired = server.manage("rmm_signing_key", "retire", "--purpose", "evidence", "--key-id", old["key_id"])
    assert "Deleted its private key" in retired.stdout
    verified = server.manage("verify_history", check=False)
    assert verified.returncode == 0 and "anchors checked" in verified.stdout, verified.stdout + verified.stderr

    # Offline: the bundle made before the rotation, with the fingerprint the auditor had then.
    done = verify_offline(before, "--fingerprint", old["fingerprint"])
    assert done.returncode == 0 and "VERDICT: PASS" in done.stdout, done.stdout

    # A bundle made after it holds anchors of both keys; an auditor with either fingerprint checks
    # it, with the standard library alone; an unrelated fingerprint fails.
    _, after = export_bundle(server, w, compliance, tmp_path / "after")
    anchors = [json.loads(p.read_text())["key_id"] for p in (after / "history" / "anchors").iterdir()]
    assert old["key_id"] in anchors and new_id in anchors
    done = verify_offline(after, "--fingerprint", new["fingerprint"], "--pure-python")
    assert done.returncode == 0 and "VERDICT: PASS" in done.stdout, done.stdout
    done = verify_offline(after, "--fingerprint", old["fingerprint"])
    assert done.returncode == 0, done.stdout
    assert "the key you expected is an earlier key of this server" in done.stdout
    stranger = keyring.fingerprint(store.raw_public(Ed25519PrivateKey.generate()))
    assert verify_offline(after, "--fingerprint", stranger).returncode == 1


def test_a_server_whose_keys_come_from_the_environment(tmp_path_factory, psa_receiver):
    """The operator generates the keys and puts them in a secret the server reads from
    RMM_SIGNING_KEYS; each is registered once; nothing private is ever written to disk."""
    tmp = tmp_path_factory.mktemp("envkeys")
    files = {}
    for purpose in ("instructions", "evidence"):
        files[purpose] = tmp / f"{purpose}.pem"
        store.write_private(files[purpose], store.pem(Ed25519PrivateKey.generate()))
    secret = base64.b64encode(b"".join(path.read_bytes() for path in files.values())).decode()
    server = Server(
        tmp,
        {
            "RMM_SIGNING_KEYS": secret,
            "RMM_PSA_WEBHOOK_URL": psa_receiver.url,
            "RMM_PSA_WEBHOOK_SECRET": psa_receiver.secret,
        },
    ).start()
    try:
        for purpose, path in files.items():
            server.manage("rmm_signing_key", "rotate", "--purpose", purpose, "--key-file", str(path))
        w = make_world(server)
        job = job_done(server, w, "echo keys from the environment\n")
        agent_once(server, w)
        assert status_of(server, w, job)["result"]["stdout"] == "keys from the environment\n"
        raw = store.raw_public(store.parse_keys(files["instructions"].read_bytes(), "instructions")[0])
        assert server_keys(w) == {keyring.key_id(raw)}
        assert not (tmp / "var" / "keys" / "signing").exists()
    finally:
        server.stop()
