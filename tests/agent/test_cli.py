"""The CLI contract end to end: a real agent process against a small fake server."""

from __future__ import annotations

import grp
import json
import os
import pwd
import signal
import stat
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rmm_agent.containment import cgroup_parent, environment_tag
from rmm_agent.protocol import CAPABILITIES, CAPABILITY_SELF_UPDATE, PROTOCOL_VERSION, facts_hash

from .conftest import (
    AGENT_CMD,
    AGENT_ID,
    TOKEN,
    FakeServer,
    agent_env,
    closed_port,
    make_payload,
    require_root,
    sign,
)
from .test_runner import pid_alive

HEARTBEAT = "/api/v1/agent/heartbeat/"


def agent(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*AGENT_CMD, *args], env=agent_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def enroll(server: FakeServer, state_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return agent(
        "enroll",
        "--server",
        server.url + "/",
        "--token",
        TOKEN,
        "--state-dir",
        str(state_dir),
        "--hostname",
        "host-under-test",
        *extra,
    )


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_enroll_writes_a_private_config(tmp_path: Path, fake_server: FakeServer) -> None:
    state_dir = tmp_path / "agent"
    done = enroll(fake_server, state_dir, "--run-as", "daemon")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == AGENT_ID
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    config_path = state_dir / "config.json"
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    config = json.loads(config_path.read_text())
    assert config["server"] == fake_server.url
    assert config["agent_id"] == AGENT_ID
    assert config["run_as"] == "daemon"
    assert config["heartbeat_interval"] == 1
    _, _, body = fake_server.requests[0]
    assert body["token"] == TOKEN
    # what it can do, for work created before its first heartbeat (self-update: once it has keys)
    assert body["protocol"] == PROTOCOL_VERSION
    assert body["capabilities"] == [name for name in CAPABILITIES if name != CAPABILITY_SELF_UPDATE]
    assert body["facts"]["hostname"] == "host-under-test"
    assert set(body["facts"]) == {
        "hostname",
        "os",
        "os_version",
        "kernel",
        "architecture",
        "cpu_count",
        "addresses",
        "boot_time",
        "agent_version",
    }


def test_refused_enrollment_prints_the_detail_and_exits_2(tmp_path: Path, fake_server: FakeServer) -> None:
    done = agent("enroll", "--server", fake_server.url, "--token", "wrong", "--state-dir", str(tmp_path / "a"))
    assert done.returncode == 2
    assert "enrollment refused (HTTP 403): Enrollment refused: unknown enrollment token." in done.stderr
    assert not (tmp_path / "a" / "config.json").exists()


def test_install_account_creates_a_locked_system_account_once() -> None:
    require_root("creating an account")
    name = f"rmm-t{uuid.uuid4().hex[:8]}"
    try:
        first = agent("install-account", "--name", name)
        assert first.returncode == 0, first.stderr
        entry = pwd.getpwnam(name)
        assert f"created system account {name} (uid {entry.pw_uid})" in first.stdout
        assert 0 < entry.pw_uid < 1000, "a system account"
        assert grp.getgrgid(entry.pw_gid).gr_name == name, "with a group of its own"
        assert entry.pw_shell.endswith(("/nologin", "/false"))
        assert not os.path.exists(entry.pw_dir), "no home"
        shadow = subprocess.run(["getent", "shadow", name], capture_output=True, text=True, check=True).stdout
        assert shadow.split(":")[1].startswith(("!", "*")), "locked: no password can open it"

        again = agent("install-account", "--name", name)
        assert again.returncode == 0, again.stderr
        assert f"account {name} exists (uid {entry.pw_uid})" in again.stdout
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)


def test_a_root_agent_will_not_enroll_without_its_run_as_account(tmp_path: Path, fake_server: FakeServer) -> None:
    require_root("dropping privileges")
    done = enroll(fake_server, tmp_path / "a", "--run-as", "no-such-user-rmm")
    assert done.returncode == 2
    assert "'no-such-user-rmm' does not exist" in done.stderr
    assert "python -m rmm_agent install-account" in done.stderr
    assert fake_server.requests == [], "the enrollment token is not used"
    assert not (tmp_path / "a" / "config.json").exists()
    refused = enroll(fake_server, tmp_path / "a", "--run-as", "root")
    assert (refused.returncode, fake_server.requests) == (2, [])
    assert "must be unprivileged" in refused.stderr


def test_enrollment_defaults_to_the_dedicated_run_as_account(tmp_path: Path, fake_server: FakeServer) -> None:
    assert enroll(fake_server, tmp_path / "a").returncode == 0
    assert json.loads((tmp_path / "a" / "config.json").read_text())["run_as"] == "rmm-run"


def test_run_once_verifies_runs_and_reports(
    tmp_path: Path, fake_server: FakeServer, server_key: Ed25519PrivateKey
) -> None:
    state_dir = tmp_path / "agent"
    assert enroll(fake_server, state_dir).returncode == 0
    good = make_payload("echo hello from $RMM_INSTRUCTION_ID\nexit 4\n")
    forged = make_payload("echo forged\n")
    forged_envelope = sign(forged, server_key)
    forged_envelope["payload"] = forged_envelope["payload"].replace("forged", "FORGED")
    # The same lease twice in one answer must run once.
    fake_server.pending = [sign(good, server_key), forged_envelope, sign(good, server_key)]

    done = agent("run", "--state-dir", str(state_dir), "--once")
    assert done.returncode == 0, done.stderr

    ran = fake_server.results[good["instruction_id"]]
    assert (ran["outcome"], ran["exit_code"]) == ("completed", 4)
    assert ran["stdout"] == f"hello from {good['instruction_id']}\n"
    refused = fake_server.results[forged["instruction_id"]]
    assert (refused["outcome"], refused["reason"], refused["exit_code"]) == ("refused", "bad_signature", None)
    assert done.stderr.count(f"ran {good['instruction_id']} exit=4") == 1
    assert not list((state_dir / "spool").iterdir())

    beat = fake_server.heartbeats()[0]
    assert beat["running"] == []
    assert beat["capacity"] == 4
    assert beat["agent_version"] == "0.1.0"
    assert beat["protocol"] == 2  # the server leases steps that name artefacts only to 2 and later
    network = beat["namespaces"]["network"]
    assert network["body"]["hostname"] == "host-under-test"
    assert network["hash"] == facts_hash(network["body"])
    assert sorted(beat["namespaces"]) == ["agent", "hardware", "network", "os"]


def bodies_sent(fake_server: FakeServer) -> list[list[str]]:
    """The namespaces each heartbeat carried a body or a patch of (every heartbeat carries every hash)."""
    beats = fake_server.heartbeats()
    assert all(sorted(beat["namespaces"]) == ["agent", "hardware", "network", "os"] for beat in beats)
    return [sorted(name for name, entry in beat["namespaces"].items() if set(entry) != {"hash"}) for beat in beats]


def test_namespaces_are_sent_only_until_acknowledged_or_when_wanted(tmp_path: Path, fake_server: FakeServer) -> None:
    state_dir = tmp_path / "agent"
    assert enroll(fake_server, state_dir).returncode == 0
    for _ in range(2):
        assert agent("run", "--state-dir", str(state_dir), "--once").returncode == 0
    fake_server.facts_wanted = ["os"]  # the server lost what it had of one namespace
    assert agent("run", "--state-dir", str(state_dir), "--once").returncode == 0
    fake_server.facts_wanted = []
    assert agent("run", "--state-dir", str(state_dir), "--once").returncode == 0
    fake_server.facts_required = True  # all of them
    assert agent("run", "--state-dir", str(state_dir), "--once").returncode == 0
    fake_server.facts_required = False
    assert agent("run", "--state-dir", str(state_dir), "--once").returncode == 0
    everything = ["agent", "hardware", "network", "os"]
    assert bodies_sent(fake_server) == [everything, [], [], ["os"], [], everything]
    assert all("body" in entry for entry in fake_server.heartbeats()[3]["namespaces"].values() if len(entry) > 1)


def rename(state_dir: Path, hostname: str) -> None:
    config = json.loads((state_dir / "config.json").read_text())
    (state_dir / "config.json").write_text(json.dumps({**config, "hostname": hostname}))


def test_a_changed_namespace_travels_alone_as_a_patch(tmp_path: Path, fake_server: FakeServer) -> None:
    state_dir = tmp_path / "agent"
    assert enroll(fake_server, state_dir).returncode == 0
    assert agent("run", "--state-dir", str(state_dir), "--once").returncode == 0
    rename(state_dir, "renamed-host")
    assert agent("run", "--state-dir", str(state_dir), "--once").returncode == 0
    first, second = fake_server.heartbeats()
    assert bodies_sent(fake_server)[1] == ["network"]
    sent = second["namespaces"]["network"]
    assert sent["patch"] == {"hostname": "renamed-host"} and "body" not in sent
    body = {**first["namespaces"]["network"]["body"], "hostname": "renamed-host"}
    assert sent["hash"] == facts_hash(body)
    state = json.loads((state_dir / "state.json").read_text())
    assert state["acked_namespaces"]["network"] == sent["hash"] and state["acked_bodies"]["network"] == body


def test_a_namespace_the_server_wants_after_a_patch_travels_whole(tmp_path: Path, fake_server: FakeServer) -> None:
    """The server could not apply a patch (it lacks the base): it wants the body, and gets it."""
    state_dir = tmp_path / "agent"
    assert enroll(fake_server, state_dir).returncode == 0
    assert agent("run", "--state-dir", str(state_dir), "--once").returncode == 0
    rename(state_dir, "renamed-host")
    fake_server.facts_wanted = ["network"]
    assert agent("run", "--state-dir", str(state_dir), "--once").returncode == 0
    fake_server.facts_wanted = []
    assert agent("run", "--state-dir", str(state_dir), "--once").returncode == 0
    patched, whole = (beat["namespaces"]["network"] for beat in fake_server.heartbeats()[1:])
    assert "patch" in patched and whole["body"]["hostname"] == "renamed-host" and "patch" not in whole


def test_unreachable_server_exits_1_and_keeps_results(tmp_path: Path, fake_server: FakeServer) -> None:
    state_dir = tmp_path / "agent"
    assert enroll(fake_server, state_dir).returncode == 0
    config = json.loads((state_dir / "config.json").read_text())
    config["server"] = f"http://127.0.0.1:{closed_port()}"
    (state_dir / "config.json").write_text(json.dumps(config))
    spooled = state_dir / "spool" / "pending-1.json"
    spooled.write_text(json.dumps({"instruction_id": "pending-1", "outcome": "completed"}))

    done = agent("run", "--state-dir", str(state_dir), "--once")
    assert done.returncode == 1
    assert "unreachable" in done.stderr
    assert spooled.exists()


def test_revoked_agent_exits_3(tmp_path: Path, fake_server: FakeServer) -> None:
    state_dir = tmp_path / "agent"
    assert enroll(fake_server, state_dir).returncode == 0
    fake_server.override[HEARTBEAT] = (401, {"detail": "agent revoked"}, {})
    done = agent("run", "--state-dir", str(state_dir), "--once")
    assert done.returncode == 3
    assert "revoked" in done.stderr


def test_throttled_heartbeat_waits_retry_after_then_gives_up(tmp_path: Path, fake_server: FakeServer) -> None:
    state_dir = tmp_path / "agent"
    assert enroll(fake_server, state_dir).returncode == 0
    fake_server.override[HEARTBEAT] = (429, {"detail": "slow down"}, {"Retry-After": "0.2"})
    started = time.monotonic()
    done = agent("run", "--state-dir", str(state_dir), "--once")
    assert done.returncode == 1
    assert len(fake_server.heartbeats()) == 3
    assert time.monotonic() - started >= 0.4


def test_a_heartbeat_answered_503_waits_retry_after_like_429(tmp_path: Path, fake_server: FakeServer) -> None:
    """The server's database is down: it answers 503 with Retry-After, and the agent waits as told."""
    state_dir = tmp_path / "agent"
    assert enroll(fake_server, state_dir).returncode == 0
    down = {"detail": "database down", "dependency": "database"}
    fake_server.override[HEARTBEAT] = (503, down, {"Retry-After": "0.2"})
    started = time.monotonic()
    done = agent("run", "--state-dir", str(state_dir), "--once")
    assert done.returncode == 1
    assert len(fake_server.heartbeats()) == 3
    assert time.monotonic() - started >= 0.4
    assert "heartbeat: database down (HTTP 503); again in 0 s" in done.stderr


def test_https_with_a_ca_file(tmp_path: Path, https_fake_server: FakeServer, server_key: Ed25519PrivateKey) -> None:
    state_dir = tmp_path / "agent"
    untrusted = enroll(https_fake_server, state_dir)
    assert untrusted.returncode == 1, "a self-signed server must not be trusted by default"
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    assert enroll(https_fake_server, state_dir, "--ca-file", https_fake_server.ca_file).returncode == 0
    payload = make_payload("echo over tls\n")
    https_fake_server.pending = [sign(payload, server_key)]
    assert agent("run", "--state-dir", str(state_dir), "--once").returncode == 0
    assert https_fake_server.results[payload["instruction_id"]]["stdout"] == "over tls\n"


def test_not_enrolled_exits_2(tmp_path: Path) -> None:
    done = agent("run", "--state-dir", str(tmp_path / "nothing"), "--once")
    assert done.returncode == 2
    assert "not enrolled" in done.stderr


def start_loop(state_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*AGENT_CMD, "run", "--state-dir", str(state_dir)],
        env=agent_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_server_abort_and_sigterm_in_the_loop(
    tmp_path: Path, fake_server: FakeServer, server_key: Ed25519PrivateKey
) -> None:
    state_dir = tmp_path / "agent"
    assert enroll(fake_server, state_dir).returncode == 0
    aborted = make_payload("sleep 30 &\necho $!\nsleep 30\n")
    interrupted = make_payload("sleep 30 &\necho $!\nsleep 30\n")
    fake_server.pending = [sign(aborted, server_key), sign(interrupted, server_key)]
    running = sorted([aborted["instruction_id"], interrupted["instruction_id"]])

    proc = start_loop(state_dir)
    try:
        wait_for(lambda: any(beat["running"] == running for beat in fake_server.heartbeats()))
        assert fake_server.heartbeats()[-1]["capacity"] == 2
        fake_server.abort = [aborted["instruction_id"]]
        wait_for(lambda: aborted["instruction_id"] in fake_server.results)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    by_server = fake_server.results[aborted["instruction_id"]]
    assert (by_server["outcome"], by_server["reason"]) == ("aborted", "aborted by server")
    by_signal = fake_server.results.get(interrupted["instruction_id"])
    if by_signal is None:  # delivery at shutdown is best effort; the spool must hold it then
        by_signal = json.loads((state_dir / "spool" / f"{interrupted['instruction_id']}.json").read_text())
    assert by_signal["outcome"] == "aborted"
    assert by_signal["exit_code"] is None
    for result in (by_server, by_signal):
        assert not pid_alive(int(result["stdout"].split()[0]))
    assert os.listdir(state_dir / "work") == []


def tagged(instruction_id: str) -> list[int]:
    """Live processes started for ``instruction_id`` (they carry its RMM_INSTRUCTION_ID)."""
    return [
        int(entry)
        for entry in os.listdir("/proc")
        if entry.isdigit() and pid_alive(int(entry)) and environment_tag(int(entry)) == instruction_id
    ]


def test_a_restarted_agent_ends_reports_and_cleans_what_a_killed_one_left(
    tmp_path: Path, fake_server: FakeServer, server_key: Ed25519PrivateKey
) -> None:
    state_dir = tmp_path / "agent"
    assert enroll(fake_server, state_dir).returncode == 0
    payload = make_payload("setsid sleep 987 &\nsleep 600\n", timeout_seconds=900)
    instruction_id = payload["instruction_id"]
    fake_server.pending = [sign(payload, server_key)]

    proc = start_loop(state_dir)
    try:
        wait_for(lambda: len(tagged(instruction_id)) >= 3)  # the shell, its sleep, the escaped sleep
        left = tagged(instruction_id)
        proc.kill()  # SIGKILL: the agent gets no chance to clean up
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert all(pid_alive(pid) for pid in left), "the script runs on, unsupervised"
    assert instruction_id not in fake_server.results
    assert (state_dir / "work" / instruction_id).is_dir()

    done = agent("run", "--state-dir", str(state_dir), "--once")
    assert done.returncode == 0, done.stderr

    assert not [pid for pid in left if pid_alive(pid)], "the restarted agent left them running"
    result = fake_server.results[instruction_id]
    assert (result["outcome"], result["exit_code"]) == ("aborted", None)
    assert result["reason"].startswith("the agent restarted while this instruction ran; killed ")
    killed = {item["pid"]: item["command"] for item in result["containment"]["killed"]}
    assert set(left) <= set(killed), result["containment"]
    assert "sleep 987" in killed.values()
    for pid in left:
        assert f"{pid} (" in result["reason"]
    assert f"{instruction_id} was running when the agent stopped" in done.stderr
    assert os.listdir(state_dir / "work") == []
    assert os.listdir(state_dir / "running") == []
    assert os.listdir(state_dir / "spool") == []
    if os.geteuid() == 0:
        assert result["containment"]["method"] == "cgroup"
        assert not (cgroup_parent() / instruction_id).exists()
