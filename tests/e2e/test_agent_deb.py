"""The agent's Debian package on this machine: built by `make agent-deb`, installed with
`dpkg -i` under a unique package name (purged afterwards), run from its install, and updated
through the real server: to a signed newer build, rolled back from a build that cannot check in,
and refusing a build signed by a key it did not pin.

systemd is installed here but is not PID 1 (no /run/systemd/system), so `systemctl` cannot
start the unit: the test checks the unit file and runs the installed agent under its own
supervisor (`python -m rmm_agent supervise`), which does what the unit's restart and
ExecStartPre do."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from rmm_agent import keyring, release
from tests.agent.test_self_update import artefact
from tests.e2e.flows import make_world, wait_for
from tests.e2e.server import ROOT, Server

SYSTEM_PYTHON = "/usr/bin/python3"
FIRST, NEWER, BROKEN, FOREIGN = "1.0.0", "1.1.0", "1.2.0", "1.3.0"

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("dpkg"), reason="needs root and dpkg")


@pytest.fixture(scope="module")
def package():
    """(name, install root) of the agent's package built and installed under a unique name."""
    name = f"rmm-agent-e2e-{uuid.uuid4().hex[:8]}"
    built = subprocess.run(
        ["make", "-s", "agent-deb", f"PKG={name}", f"VERSION={FIRST}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    deb = Path(built.stdout.strip().splitlines()[-1])
    assert deb == ROOT / "dist" / f"{name}_{FIRST}_all.deb" and deb.is_file()
    try:
        subprocess.run(["dpkg", "-i", str(deb)], capture_output=True, check=True)
        yield name, Path("/opt") / name
    finally:
        subprocess.run(["dpkg", "--purge", name], capture_output=True, check=False)
        deb.unlink(missing_ok=True)
    assert not (Path("/opt") / name).exists()


@pytest.fixture(scope="module")
def update_server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("update"), {"RMM_AGENT_UPDATE_CHECK_IN_SECONDS": "30"}).start()
    yield srv
    srv.stop()


def test_the_package_installs_the_versioned_agent_and_its_unit(package):
    name, root = package
    assert os.readlink(root / "current") == f"versions/{FIRST}"
    unit = Path(f"/lib/systemd/system/{name}.service").read_text()
    for line in (
        "Delegate=yes",
        "Restart=on-failure",
        f"EnvironmentFile=-/etc/default/{name}",
        f"Environment=PYTHONPATH={root}/current",
        f"ExecStartPre=/usr/bin/python3 -m rmm_agent update-check --state-dir ${{RMM_AGENT_STATE_DIR}} --root {root}",
    ):
        assert line in unit.splitlines()
    assert f"RMM_AGENT_STATE_DIR=/var/lib/{name}" in Path(f"/etc/default/{name}").read_text()
    version = subprocess.run(
        [SYSTEM_PYTHON, "-m", "rmm_agent", "--version"],
        env={"PYTHONPATH": f"{root}/current"},
        cwd=root,  # not the checkout, whose rmm_agent python -m would import first
        capture_output=True,
        text=True,
        check=True,
    )
    assert version.stdout.strip() == f"rmm_agent {FIRST}"
    assert not Path("/run/systemd/system").exists(), "systemd runs here: this test should use systemctl"


def _publish(server: Server, tmp: Path, version: str, data: bytes) -> None:
    path = tmp / f"agent-{version}.tar.gz"
    path.write_bytes(data)
    server.manage("rmm_agent_release", "publish", str(path), "--version", version)


def _publish_foreign(server: Server, version: str, data: bytes) -> None:
    """A release written into the release directory with a manifest signed by some other key."""
    key = Ed25519PrivateKey.generate()
    sha256 = hashlib.sha256(data).hexdigest()
    payload = release.manifest_payload(version, sha256, len(data))
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    directory = server.tmp / "var" / "releases"
    (directory / f"{sha256}.tar.gz").write_bytes(data)
    manifest = {"payload": payload, "key_id": keyring.key_id(raw), "signature": keyring.b64(key.sign(payload.encode()))}
    record = {"version": version, "sha256": sha256, "size": len(data), "manifest": manifest}
    (directory / f"{version}.json").write_text(json.dumps(record))


def _update(server: Server, w: dict, asset: str, version: str) -> tuple[str, str]:
    """Create the update job and wait until it ends: (status, reason)."""
    wanted = {"version": version, "asset_id": asset, "psa_task_id": w["task"]}
    created = server.request("POST", "/api/v1/agent-updates/", wanted, w["psa"])
    assert created.status == 201, created.body
    job_id = created.json()["jobs"][0]["id"]

    def ended():
        show = "from rmm.updates.models import UpdateJob as J; j = J.objects.get(pk='%s')"
        show += "; print(j.status, j.status_reason)"
        line = server.manage("shell", "-c", show % job_id).stdout.strip().splitlines()[-1]  # after the shell's notice
        return line if line.split(" ", 1)[0] in ("succeeded", "failed", "timed_out", "lost", "aborted") else None

    status, _, reason = wait_for(ended, timeout=150, what=f"the update to {version}", every=1).partition(" ")
    return status, reason


def test_the_installed_agent_updates_itself_rolls_back_and_refuses_a_foreign_build(package, update_server, tmp_path):
    name, root = package
    server = update_server
    w = make_world(server)
    state = tmp_path / "state"
    env = {**server.env, "PYTHONPATH": f"{root}/current"}
    token = server.manage("rmm_enrollment_token", "--site", w["site"]).stdout.strip()
    hostname = f"deb-{uuid.uuid4().hex[:6]}"
    enroll = [SYSTEM_PYTHON, "-m", "rmm_agent", "enroll", "--server", server.url, "--token", token]
    subprocess.run([*enroll, "--state-dir", str(state), "--hostname", hostname], env=env, check=True, cwd=root)
    asset = server.request("GET", f"/api/v1/assets/?hostname={hostname}", token=w["tech"]).json()["results"][0]["id"]
    log = (tmp_path / "supervisor.log").open("wb")
    supervisor = subprocess.Popen(
        [SYSTEM_PYTHON, "-m", "rmm_agent", "supervise", "--state-dir", str(state), "--restart-seconds", "0.5"],
        env=env,
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            lambda: "self_update" in server.manage("shell", "-c", _capabilities(asset)).stdout,
            timeout=30,
            what="the installed agent's self_update capability",
        )
        _publish(server, tmp_path, NEWER, artefact(NEWER))
        assert _update(server, w, asset, NEWER) == ("succeeded", "")
        assert os.readlink(root / "current") == f"versions/{NEWER}"
        assert (root / "versions" / FIRST).is_dir()  # the previous version stays on disk

        _publish(server, tmp_path, BROKEN, artefact(BROKEN, main="import sys\nsys.exit(1)\n"))
        status, reason = _update(server, w, asset, BROKEN)
        assert status == "failed" and f"rolled back to {NEWER}" in reason, reason
        assert os.readlink(root / "current") == f"versions/{NEWER}"

        _publish_foreign(server, FOREIGN, artefact(FOREIGN))
        status, reason = _update(server, w, asset, FOREIGN)
        assert status == "failed" and "release_signature" in reason, reason
        assert os.readlink(root / "current") == f"versions/{NEWER}"
        assert not (root / "versions" / FOREIGN).exists()
    finally:
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(timeout=30)
        except subprocess.TimeoutExpired:
            supervisor.kill()
        log.close()


def _capabilities(asset: str) -> str:
    return f"from rmm.inventory.models import Agent; print(Agent.objects.get(asset_id='{asset}').capabilities)"
