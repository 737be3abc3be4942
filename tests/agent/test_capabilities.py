"""What the agent says it can do, on every heartbeat: asked of the Python it runs on once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.agent.conftest import agent_env


def test_a_failing_websockets_import_is_tried_once_not_on_every_heartbeat(tmp_path: Path) -> None:
    """A ``websockets`` that cannot be imported (it counts each try): three heartbeats' worth of
    capabilities, one import, and no remote sessions offered."""
    package = tmp_path / "websockets"
    package.mkdir()
    tries = tmp_path / "tries"
    (package / "__init__.py").write_text(f"open({str(tries)!r}, 'a').write('x')\nraise ImportError('broken')\n")
    env = agent_env()
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    code = (
        "from rmm_agent.agent import capabilities_of\n"
        "said = [capabilities_of(can_update=False) for _ in range(3)]\n"
        "print(all('remote_session' not in s for s in said))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
    assert tries.read_text() == "x"
