"""The run-as account attacks a root agent's runner while hundreds of instructions run.

An attacker process running as the run-as account (tests/agent/race_attacker.py) swaps every
script file and work directory it can reach for symlinks to a root-owned 0600 file, and
rewrites scripts after their hash was checked. The runner must give it nothing: the file
keeps its owner and mode, and every instruction runs exactly the signed bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rmm_agent.accounts import Account, interpreter_command
from rmm_agent.runner import Runner

from .conftest import make_payload

INSTRUCTIONS = 300
ATTACKER = Path(__file__).with_name("race_attacker.py")
# Prints the sha256 of the bytes the interpreter was given, read back from $0.
SCRIPT = 'sha256sum "$0" | cut -d" " -f1\nsleep 0.02\n'


def test_the_run_as_account_cannot_win_the_work_dir_race(tmp_path: Path, run_as_account: Account) -> None:
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir(mode=0o755)
    target = secret_dir / "root-only"
    target.write_text("root only\n")
    os.chmod(target, 0o600)
    # A work root in the open (a root-owned 0755 dir in /tmp): the attacker can list it.
    work_root = Path(tempfile.mkdtemp(prefix="rmm-race-"))
    os.chmod(work_root, 0o755)
    python = interpreter_command("python", run_as_account)
    assert python is not None
    attacker = subprocess.Popen(
        [python, str(ATTACKER), str(target), str(work_root)],
        user=run_as_account.uid,
        group=run_as_account.gid,
        extra_groups=[],
        cwd="/",
        stdout=subprocess.PIPE,
        text=True,
    )
    runner = Runner(work_root)
    payloads = [make_payload(SCRIPT) for _ in range(INSTRUCTIONS)]
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(runner.run, payloads))
    finally:
        attacker.send_signal(signal.SIGTERM)
        out, _ = attacker.communicate(timeout=30)
        shutil.rmtree(work_root, ignore_errors=True)
    counts = json.loads(out)
    print(f"attacker: {counts}")

    assert counts["swaps"] > 0, f"the attacker never got to swap anything: {counts}"
    st = target.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o600), "the root-owned file was handed over"
    assert target.read_text() == "root only\n"
    assert not list(secret_dir.glob("script.*")), "the agent wrote where the attacker pointed it"
    for payload, result in zip(payloads, results, strict=True):
        assert result["outcome"] == "completed", result
        assert result["stdout"].strip() == payload["content_sha256"], "what ran is not what was signed"
