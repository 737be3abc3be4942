"""The runner against real processes: capture, exit codes, timeouts, abort, privilege,
containment of everything an instruction starts."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from rmm_agent.accounts import DEFAULT_RUN_AS, Account, interpreter_command, lookup_account
from rmm_agent.containment import cgroup_parent
from rmm_agent.protocol import MAX_STREAM_BYTES, result_hash
from rmm_agent.runner import AbortSignal, Runner, run_instruction

from .conftest import REPO_ROOT, make_payload, require_root


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (container init may never reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def run(content: str, tmp_path: Path, **overrides: object) -> dict:
    payload = make_payload(content, **overrides)
    result = run_instruction(payload, tmp_path / "work")
    assert result["instruction_id"] == payload["instruction_id"]
    assert result["hash"] == result_hash(result)
    return result


def test_exit_code_and_both_streams_are_captured(tmp_path: Path) -> None:
    result = run("echo out; echo err >&2; exit 0\n", tmp_path)
    assert result["outcome"] == "completed"
    assert result["exit_code"] == 0
    assert result["stdout"] == "out\n"
    assert result["stderr"] == "err\n"
    assert result["stdout_truncated"] is False
    assert result["reason"] is None
    assert result["started_at"].endswith("Z")
    assert result["finished_at"] >= result["started_at"]


def test_non_zero_exit_is_completed_with_its_code(tmp_path: Path) -> None:
    result = run("echo failing >&2; exit 7\n", tmp_path)
    assert (result["outcome"], result["exit_code"]) == ("completed", 7)
    assert result["stderr"] == "failing\n"


def test_arguments_environment_and_work_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_ONLY_SECRET", "must-not-leak")
    script = 'printf "[%s]" "$@"; echo; env; echo "cwd=$(pwd)"; echo "zero=$0"; echo kept > here; cat here\n'
    payload = make_payload(script, arguments=["a b", "$HOME", ""])
    result = run_instruction(payload, tmp_path / "work")
    lines = result["stdout"].splitlines()
    assert lines[0] == "[a b][$HOME][]"
    assert f"RMM_INSTRUCTION_ID={payload['instruction_id']}" in lines
    assert "must-not-leak" not in result["stdout"]
    names = {line.split("=", 1)[0] for line in lines[1:] if "=" in line}
    assert names <= {"PATH", "HOME", "LANG", "RMM_INSTRUCTION_ID", "RMM_RESULT_PATH", "PWD", "SHLVL", "cwd", "zero"}
    cwd = Path(next(line for line in lines if line.startswith("cwd="))[4:])
    assert cwd == tmp_path / "work" / payload["instruction_id"]
    assert "kept" in lines, "the script may write in its work dir"
    # The script is read from a sealed descriptor, never from a file in the work dir.
    assert next(line for line in lines if line.startswith("zero="))[5:].startswith("/dev/fd/")
    assert not cwd.exists(), "work dir is removed after the run"


@pytest.mark.parametrize(
    ("interpreter", "content"),
    [
        ("sh", 'sha256sum "$0" | cut -d" " -f1\n'),
        ("bash", 'sha256sum "$0" | cut -d" " -f1  # bash\n'),
        ("python", "import hashlib, sys\nprint(hashlib.sha256(open(sys.argv[0], 'rb').read()).hexdigest())\n"),
    ],
)
def test_what_runs_is_exactly_the_signed_content(tmp_path: Path, interpreter: str, content: str) -> None:
    payload = make_payload(content, interpreter=interpreter)
    result = run_instruction(payload, tmp_path / "work")
    assert result["outcome"] == "completed", result
    assert result["stdout"].strip() == payload["content_sha256"]


def test_the_script_descriptor_cannot_be_written(tmp_path: Path) -> None:
    payload = make_payload('echo appended >> "$0" && echo WROTE\nsha256sum "$0" | cut -d" " -f1\n')
    result = run_instruction(payload, tmp_path / "work")
    assert "WROTE" not in result["stdout"], "the sealed script must not be writable"
    assert result["stdout"].strip() == payload["content_sha256"]


def test_a_work_root_others_may_write_is_refused(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir(mode=0o777)
    os.chmod(tmp_path / "work", 0o777)
    result = run_instruction(make_payload("echo ran\n"), tmp_path / "work")
    assert (result["outcome"], result["stdout"]) == ("error", "")
    assert "writable by it alone" in result["reason"]


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    script = "sleep 30 &\necho $!\nsleep 30\n"
    started = time.monotonic()
    result = run(script, tmp_path, timeout_seconds=1)
    elapsed = time.monotonic() - started
    assert result["outcome"] == "timed_out"
    assert result["exit_code"] is None
    assert "timed out" in result["reason"]
    child = int(result["stdout"].split()[0])
    assert not pid_alive(child), "background child survived the timeout"
    assert elapsed < 6


def test_sigterm_ignoring_script_is_killed_after_grace(tmp_path: Path) -> None:
    payload = make_payload("trap '' TERM\necho $$\nwhile :; do sleep 0.1; done\n")
    payload["timeout_seconds"] = 0.5
    started = time.monotonic()
    result = run_instruction(payload, tmp_path / "work", kill_grace=0.5)
    assert result["outcome"] == "timed_out"
    assert not pid_alive(int(result["stdout"].split()[0]))
    assert time.monotonic() - started < 5


def test_leftover_background_processes_are_cleaned_up(tmp_path: Path) -> None:
    result = run("sleep 30 &\necho $!\n", tmp_path)
    assert (result["outcome"], result["exit_code"]) == ("completed", 0)
    assert not pid_alive(int(result["stdout"].split()[0]))


def test_output_over_the_cap_is_truncated_and_flagged(tmp_path: Path) -> None:
    script = "yes abcdefghij | head -c 3000000\nyes e | head -c 2000000 >&2\necho done >&2\nexit 3\n"
    result = run(script, tmp_path)
    assert (result["outcome"], result["exit_code"]) == ("completed", 3)
    assert result["stdout_truncated"] is True
    assert result["stderr_truncated"] is True
    assert len(result["stdout"].encode()) == MAX_STREAM_BYTES
    assert len(result["stderr"].encode()) == MAX_STREAM_BYTES
    assert result["stdout"].startswith("abcdefghij\nabcdefghij\n")


def test_output_at_the_cap_is_not_flagged(tmp_path: Path) -> None:
    result = run(f"yes x | head -c {MAX_STREAM_BYTES}\n", tmp_path)
    assert len(result["stdout"]) == MAX_STREAM_BYTES
    assert result["stdout_truncated"] is False


def test_invalid_utf8_travels_as_the_exact_bytes(tmp_path: Path) -> None:
    result = run("printf 'caf\\351\\000\\n'\n", tmp_path)
    assert result["stdout_encoding"] == "base64"
    assert base64.b64decode(result["stdout"]) == b"caf\xe9\x00\n"
    assert result["hash"] == result_hash(result)


def test_abort_kills_the_running_instruction(tmp_path: Path) -> None:
    abort = AbortSignal()
    started_pids: list[int] = []
    payload = make_payload("sleep 30 &\necho $!\nsleep 30\n")
    timer = threading.Timer(0.5, abort.set, args=("aborted by server",))
    timer.start()
    started = time.monotonic()
    result = run_instruction(payload, tmp_path / "work", abort=abort, on_start=started_pids.append)
    assert result["outcome"] == "aborted"
    assert result["exit_code"] is None
    assert result["reason"] == "aborted by server"
    assert time.monotonic() - started < 5
    assert started_pids
    assert not pid_alive(int(result["stdout"].split()[0])), "background child survived"


def test_python_interpreter(tmp_path: Path) -> None:
    payload = make_payload("import sys\nprint(sys.argv[1:])\n", interpreter="python")
    payload["arguments"] = ["x", "y"]
    result = run_instruction(payload, tmp_path / "work")
    assert result["outcome"] == "completed", result
    assert result["stdout"] == "['x', 'y']\n"


@pytest.mark.skipif(shutil.which("pwsh") is not None, reason="pwsh is installed")
def test_unavailable_interpreter_is_refused_without_running(tmp_path: Path) -> None:
    assert interpreter_command("powershell") is None
    result = run("Write-Output hi\n", tmp_path, interpreter="powershell")
    assert result["outcome"] == "refused"
    assert result["reason"] == "unsupported_interpreter"
    assert result["exit_code"] is None
    assert not (tmp_path / "work" / result["instruction_id"]).exists()


def test_root_agent_runs_unprivileged_instructions_as_run_as(tmp_path: Path, run_as_account: Account) -> None:
    script = "id -u; id -G; echo $HOME; pwd; ls -ld .\n"
    result = run(script, tmp_path, privileged=False)
    uid, groups, home, cwd, listing = result["stdout"].splitlines()
    assert int(uid) == run_as_account.uid != 0
    assert groups.split() == [str(run_as_account.gid)], "root's groups must be dropped"
    assert home == cwd
    assert listing.startswith("drwx------") and f" {DEFAULT_RUN_AS} " in listing


def test_privileged_instruction_runs_as_the_agent(tmp_path: Path) -> None:
    require_root("running privileged")
    result = run("id -u; pwd\n", tmp_path, privileged=True)
    uid, cwd = result["stdout"].splitlines()
    assert int(uid) == 0
    assert Path(cwd).parent == tmp_path / "work"
    assert not Path(cwd).exists()


def test_missing_run_as_account_is_an_error_not_a_root_run(tmp_path: Path) -> None:
    require_root("dropping privileges")
    payload = make_payload("id -u\n")
    result = run_instruction(payload, tmp_path / "work", run_as="no-such-user-rmm")
    assert result["outcome"] == "error"
    assert "no-such-user-rmm" in result["reason"]
    assert "install-account" in result["reason"]
    assert result["stdout"] == ""


def test_a_root_run_as_account_is_refused(tmp_path: Path) -> None:
    require_root("dropping privileges")
    result = run_instruction(make_payload("id -u\n"), tmp_path / "work", run_as="root")
    assert (result["outcome"], result["stdout"]) == ("error", "")
    assert "privileged" in result["reason"]


# -- containment: nothing an instruction started outlives it ---------------------------------

# A child that leaves the session and the process group; the script waits until it runs `sleep`
# (before that it is still a copy of the shell, and would be named so when killed).
ESCAPE = "setsid sleep 987 &\necho $!\nuntil grep -q 987 /proc/$!/cmdline; do sleep 0.01; done\n"


def containing_runner(tmp_path: Path, method: str, request: pytest.FixtureRequest) -> Runner:
    """A runner forced to one containment method (the cgroup one and the account fallback need
    root; the fallback gets an account of its own, as it kills whatever that account starts)."""
    if method != "process_group":
        require_root(f"{method} containment")
    run_as = request.getfixturevalue("own_account").name if method == "account" else DEFAULT_RUN_AS
    return Runner(tmp_path / "work", run_as=run_as, containment=method, kill_grace=0.5)


def assert_killed(result: dict, method: str) -> int:
    """The escaped sleeper is gone and the result names it; its pid."""
    pid = int(result["stdout"].split()[0])
    assert not pid_alive(pid), "a setsid child outlived its instruction"
    assert result["containment"]["method"] == method
    named = {item["pid"]: item["command"] for item in result["containment"]["killed"]}
    assert "sleep 987" in named.get(pid, ""), result["containment"]
    assert result["hash"] == result_hash(result)
    return pid


METHODS = ["cgroup", "account", "process_group"]


@pytest.mark.parametrize("method", METHODS)
def test_a_setsid_child_is_gone_when_the_instruction_completes(
    tmp_path: Path, method: str, request: pytest.FixtureRequest
) -> None:
    result = containing_runner(tmp_path, method, request).run(make_payload(ESCAPE))
    assert (result["outcome"], result["exit_code"]) == ("completed", 0)
    assert_killed(result, method)


@pytest.mark.parametrize("method", METHODS)
def test_a_setsid_child_is_gone_after_a_timeout(tmp_path: Path, method: str, request: pytest.FixtureRequest) -> None:
    payload = make_payload(ESCAPE + "sleep 30\n", timeout_seconds=1)
    result = containing_runner(tmp_path, method, request).run(payload)
    assert result["outcome"] == "timed_out"
    assert_killed(result, method)


@pytest.mark.parametrize("method", METHODS)
def test_a_setsid_child_is_gone_after_an_abort(tmp_path: Path, method: str, request: pytest.FixtureRequest) -> None:
    runner, abort = containing_runner(tmp_path, method, request), AbortSignal()
    threading.Timer(0.5, abort.set, args=("aborted by server",)).start()
    result = runner.run(make_payload(ESCAPE + "sleep 30\n"), abort)
    assert (result["outcome"], result["reason"]) == ("aborted", "aborted by server")
    assert_killed(result, method)


def test_cgroup_containment_is_the_default_where_cgroup_v2_can_be_used(tmp_path: Path) -> None:
    require_root("creating cgroups")
    assert cgroup_parent() is not None, "no usable cgroup v2 mount found in /proc/self/mountinfo"
    result = run_instruction(make_payload("cat /proc/self/cgroup\n"), tmp_path / "work")
    assert result["containment"] == {"method": "cgroup", "killed": []}
    payload_id = result["instruction_id"]
    assert f"/rmm/{payload_id}" in result["stdout"], "the script ran inside its own cgroup"
    assert not (cgroup_parent() / payload_id).exists(), "the cgroup is removed afterwards"


def test_the_account_fallback_spares_another_running_instruction(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    runner = containing_runner(tmp_path, "account", request)
    longer = make_payload("for i in 1 2 3 4 5 6; do sleep 0.3; done\necho done\n")
    results: dict[str, dict] = {}
    thread = threading.Thread(target=lambda: results.update(longer=runner.run(longer)))
    thread.start()
    time.sleep(0.4)
    shorter = runner.run(make_payload("sleep 5 &\necho $!\n"))
    thread.join()
    assert [item["pid"] for item in shorter["containment"]["killed"]] == [int(shorter["stdout"])]
    assert (results["longer"]["outcome"], results["longer"]["stdout"]) == ("completed", "done\n")
    assert results["longer"]["containment"] == {"method": "account", "killed": []}


def test_a_non_root_agent_runs_sh_bash_and_python_as_itself(tmp_path: Path) -> None:
    require_root("starting the runner as another account")
    agent = lookup_account("nobody")
    python = interpreter_command("python", agent)
    assert python is not None
    work = Path(tempfile.mkdtemp(prefix="rmm-non-root-"))
    os.chown(work, agent.uid, agent.gid)
    payloads = [
        make_payload('id -u; sha256sum "$0" | cut -d" " -f1; ' + ESCAPE, interpreter=interpreter)
        for interpreter in ("sh", "bash")
    ]
    payloads.append(
        make_payload(
            "import hashlib, os, subprocess, sys\n"
            "print(os.getuid()); print(hashlib.sha256(open(sys.argv[0], 'rb').read()).hexdigest())\n"
            "print(subprocess.Popen(['sleep', '987'], start_new_session=True).pid)\n",
            interpreter="python",
        )
    )
    code = (
        "import json, sys\n"
        "from rmm_agent.runner import Runner\n"
        "runner = Runner(sys.argv[1], kill_grace=0.5)\n"
        "print(json.dumps([runner.run(payload) for payload in json.load(sys.stdin)]))\n"
    )
    try:
        done = subprocess.run(
            [python, "-c", code, str(work / "work")],
            input=json.dumps(payloads),
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)},
            cwd=work,
            user=agent.uid,
            group=agent.gid,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        results = json.loads(done.stdout)
    finally:
        shutil.rmtree(work)
    for payload, result in zip(payloads, results, strict=True):
        assert result["outcome"] == "completed", result
        uid, digest, sleeper = result["stdout"].split()
        assert (int(uid), digest) == (agent.uid, payload["content_sha256"])
        assert not pid_alive(int(sleeper))
        assert result["containment"]["method"] == "process_group"
        assert int(sleeper) in {item["pid"] for item in result["containment"]["killed"]}
