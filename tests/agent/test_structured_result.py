"""A step's structured result: the JSON document its script writes to $RMM_RESULT_PATH, read by
the runner once the script ended, size- and shape-checked, covered by the result hash; and a
step's reboot: whether the result says one follows."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from rmm_agent import results
from rmm_agent.protocol import (
    MAX_BODY_BYTES,
    MAX_STRUCTURED_BYTES,
    MAX_STRUCTURED_DEPTH,
    encode_body,
    result_hash,
    structured_problem,
)
from rmm_agent.results import make_result, truncated_for_delivery
from rmm_agent.runner import run_instruction

from .conftest import make_payload


def run(content: str, tmp_path: Path, **overrides: object) -> dict:
    result = run_instruction(make_payload(content, **overrides), tmp_path / "work")
    assert result["hash"] == result_hash(result)
    return result


def test_the_document_the_script_writes_is_in_the_result_under_its_hash(tmp_path: Path) -> None:
    result = run("""printf '{"found": 3, "items": ["a", "b"]}' > "$RMM_RESULT_PATH"\necho done\n""", tmp_path)
    assert result["structured"] == {"found": 3, "items": ["a", "b"]}
    assert "structured_error" not in result
    assert result["stdout"] == "done\n"
    assert result["hash"] != result_hash({**result, "structured": {"found": 0, "items": ["a", "b"]}})


def test_a_script_that_writes_none_sends_none(tmp_path: Path) -> None:
    result = run("echo hello\n", tmp_path)
    assert "structured" not in result and "structured_error" not in result
    # a v1 result's hash is unchanged: absent fields are left out of it
    assert result["hash"] == result_hash({key: value for key, value in result.items() if key != "hash"})


@pytest.mark.parametrize(
    ("script", "error"),
    [
        ("""printf 'not json' > "$RMM_RESULT_PATH"\n""", "not JSON"),
        ("""printf '"a string"' > "$RMM_RESULT_PATH"\n""", "not a JSON object or array"),
        ("""printf '[NaN]' > "$RMM_RESULT_PATH"\n""", "not JSON"),
        (
            f"""head -c {MAX_STRUCTURED_BYTES + 1} /dev/zero | tr '\\0' ' ' > "$RMM_RESULT_PATH"\n""",
            f"larger than {MAX_STRUCTURED_BYTES} bytes",
        ),
        ("""ln -s /etc/passwd "$RMM_RESULT_PATH"\n""", "not readable"),
        ("""mkfifo "$RMM_RESULT_PATH"\n""", "not a regular file of the script's own account"),
        (
            "python3 -c \"import os; open(os.environ['RMM_RESULT_PATH'], 'w').write('['*"
            f"{MAX_STRUCTURED_DEPTH + 1}+']'*{MAX_STRUCTURED_DEPTH + 1})\"\n",
            f"nested deeper than {MAX_STRUCTURED_DEPTH}",
        ),
    ],
    ids=["not-json", "scalar", "nan", "too-large", "symlink", "fifo", "too-deep"],
)
def test_an_unusable_document_is_named_in_the_result_never_sent(tmp_path: Path, script: str, error: str) -> None:
    result = run(script + "exit 0\n", tmp_path)
    assert result["exit_code"] == 0
    assert "structured" not in result
    assert result["structured_error"].startswith(error)


def test_shape_rules_shared_by_agent_and_server() -> None:
    assert structured_problem({"a": [1, 2.5, None, True, "x"]}) is None
    assert structured_problem([]) is None
    assert structured_problem({"a": "nul\x00"}) == "a string holds NUL or a lone surrogate"
    assert structured_problem({"\ud800": 1}) == "a string holds NUL or a lone surrogate"
    assert structured_problem({"a": float("inf")}) == "a number is not finite"
    assert structured_problem({"a": "x" * MAX_STRUCTURED_BYTES}) == f"larger than {MAX_STRUCTURED_BYTES} bytes"
    assert structured_problem(3) == "not a JSON object or array"


def test_a_result_with_a_full_document_and_full_streams_still_fits_the_body_bound() -> None:
    document = {"k": "\u20ac" * (MAX_STRUCTURED_BYTES // 3 - 20)}  # 3 UTF-8 bytes, 6 ASCII JSON chars each
    assert structured_problem(document) is None
    full = b"\xff" * (1024 * 1024)
    result = make_result("i-1", "completed", exit_code=0, stdout=full, stderr=full, structured=document)
    assert len(encode_body(result)) <= MAX_BODY_BYTES
    assert result["structured"] == document and result["hash"] == result_hash(result)


def test_a_refused_result_is_resent_smaller_and_at_last_without_its_document() -> None:
    result = make_result("i-1", "completed", exit_code=0, stdout="x" * 100_000, structured={"a": 1})
    once = truncated_for_delivery(result)
    assert once["structured"] == {"a": 1} and once["stdout_truncated"] is True
    twice = truncated_for_delivery(once)
    assert "structured" not in twice
    assert twice["structured_error"] == "dropped: the server refused the result with it"
    assert twice["hash"] == result_hash(twice)
    assert truncated_for_delivery(twice) is None


def test_a_reboot_follows_a_step_that_asks_for_one_only_when_it_succeeded(tmp_path: Path, monkeypatch) -> None:
    assert run("exit 0\n", tmp_path, reboot="now")["reboot"] is True
    assert run("exit 1\n", tmp_path, reboot="now")["reboot"] is False
    assert "reboot" not in run("exit 0\n", tmp_path)
    pending = tmp_path / "reboot-required"
    monkeypatch.setenv("RMM_AGENT_REBOOT_REQUIRED_PATH", str(pending))
    assert run("exit 0\n", tmp_path, reboot="if_pending")["reboot"] is False
    pending.write_text("")
    assert run("exit 0\n", tmp_path, reboot="if_pending")["reboot"] is True


def test_a_step_whose_document_is_unusable_does_not_reboot(tmp_path: Path) -> None:
    result = run("""printf 'nope' > "$RMM_RESULT_PATH"\n""", tmp_path, reboot="now")
    assert result["reboot"] is False


def test_the_written_document_is_read_before_the_work_dir_goes(tmp_path: Path) -> None:
    result = run("""echo '[1,2,3]' > "$RMM_RESULT_PATH"\n""", tmp_path)
    assert result["structured"] == [1, 2, 3]
    assert not any((tmp_path / "work").iterdir())
    assert json.loads(json.dumps(result))["structured"] == [1, 2, 3]


class _Key:
    def __init__(self, values: dict):
        self.values = values

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def _registry(keys: dict[str, dict]) -> types.SimpleNamespace:
    """A stand-in for Windows' winreg over HKEY_LOCAL_MACHINE: {key path: {value name: data}}."""

    def open_key(root, path):
        if path not in keys:
            raise FileNotFoundError(path)
        return _Key(keys[path])

    def query_value(key, name):
        if name not in key.values:
            raise FileNotFoundError(name)
        return key.values[name], 7

    return types.SimpleNamespace(HKEY_LOCAL_MACHINE=object(), OpenKey=open_key, QueryValueEx=query_value)


@pytest.mark.parametrize(
    ("keys", "pending"),
    [
        ({}, False),
        ({results.WINDOWS_SESSION_MANAGER: {}}, False),
        ({results.WINDOWS_SESSION_MANAGER: {"PendingFileRenameOperations": []}}, False),
        ({results.WINDOWS_REBOOT_KEYS[0]: {}}, True),
        ({results.WINDOWS_REBOOT_KEYS[1]: {}}, True),
        ({results.WINDOWS_SESSION_MANAGER: {"PendingFileRenameOperations": ["\\??\\C:\\x", ""]}}, True),
    ],
    ids=["none", "session_manager", "no_renames", "servicing", "windows_update", "renames"],
)
def test_on_windows_a_pending_reboot_is_what_its_pending_reboot_keys_say(monkeypatch, keys, pending) -> None:
    monkeypatch.setattr(results, "WINDOWS", True)
    monkeypatch.setitem(sys.modules, "winreg", _registry(keys))
    assert results.reboot_pending() is pending
    monkeypatch.setenv("RMM_AGENT_REBOOT_REQUIRED_PATH", "/")  # a file that exists: not what Windows reads
    assert results.reboot_follows({"reboot": "if_pending"}, "completed", 0, None) is pending
