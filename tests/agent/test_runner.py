"""The runner against real processes: capture, exit codes, timeouts, abort, privilege."""

from __future__ import annotations

import base64
import os
import pwd
import shutil
import threading
import time
from pathlib import Path

import pytest

from rmm_agent.protocol import MAX_STREAM_BYTES, result_hash
from rmm_agent.runner import AbortSignal, interpreter_command, run_instruction

from .conftest import make_payload

IS_ROOT = os.geteuid() == 0


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (container init may never reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def run(content: str, tmp_path: Path, **overrides: object) -> dict:
    payload = make_payload(content, **overrides)
    result = run_instruction(payload, tmp_path / "work", run_as="nobody")
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
    script = 'printf "[%s]" "$@"; echo; env; echo "cwd=$(pwd)"; ls\n'
    payload = make_payload(script, arguments=["a b", "$HOME", ""])
    result = run_instruction(payload, tmp_path / "work", run_as="nobody")
    lines = result["stdout"].splitlines()
    assert lines[0] == "[a b][$HOME][]"
    assert f"RMM_INSTRUCTION_ID={payload['instruction_id']}" in lines
    assert "must-not-leak" not in result["stdout"]
    names = {line.split("=", 1)[0] for line in lines[1:] if "=" in line}
    assert names <= {"PATH", "HOME", "LANG", "RMM_INSTRUCTION_ID", "PWD", "SHLVL", "cwd"}
    cwd = Path(next(line for line in lines if line.startswith("cwd="))[4:])
    assert "script.sh" in lines
    assert not cwd.exists(), "work dir is removed after the run"


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


@pytest.mark.skipif(not IS_ROOT, reason="dropping privileges needs root")
def test_root_agent_runs_unprivileged_instructions_as_run_as(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    script = "id -u; id -G; echo $HOME; pwd\n"
    result = run(script, tmp_path, privileged=False)
    uid, groups, home, cwd = result["stdout"].splitlines()
    assert int(uid) == nobody.pw_uid
    assert groups.split() == [str(nobody.pw_gid)], "root's groups must be dropped"
    assert home == cwd


@pytest.mark.skipif(not IS_ROOT, reason="only root can run privileged")
def test_privileged_instruction_runs_as_the_agent(tmp_path: Path) -> None:
    result = run("id -u; pwd\n", tmp_path, privileged=True)
    uid, cwd = result["stdout"].splitlines()
    assert int(uid) == 0
    assert Path(cwd).parent == tmp_path / "work"
    assert not Path(cwd).exists()


@pytest.mark.skipif(not IS_ROOT, reason="dropping privileges needs root")
def test_missing_run_as_account_is_an_error_not_a_root_run(tmp_path: Path) -> None:
    payload = make_payload("id -u\n")
    result = run_instruction(payload, tmp_path / "work", run_as="no-such-user-rmm")
    assert result["outcome"] == "error"
    assert "no-such-user-rmm" in result["reason"]
    assert result["stdout"] == ""
