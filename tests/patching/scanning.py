"""What the scan tests share: recorded tool output made into scan documents, a world with an agent
that returns structured results, and the agent's side played in process."""

from __future__ import annotations

import json
from pathlib import Path

from django.utils import timezone

from patching import scans
from rmm.engine import services as engine
from rmm_agent.results import make_result

RECORDED = Path(__file__).parent / "recorded"


def lines(name: str) -> list[str]:
    return (RECORDED / name).read_text().splitlines()


def dpkg_document(installed: dict[str, str], available: dict[str, str], wanted=()) -> dict:
    """A Debian scan's document as the script writes it, from {package: version}."""
    return {
        "format": scans.FORMAT,
        "family": "dpkg",
        "os_id": "debian",
        "os_version": "12",
        "wanted": [list(pair) for pair in wanted],
        "installed": [f"{name} {version} installed" for name, version in installed.items()],
        "available": ["Reading package lists..."]
        + [
            f"Inst {name} [{installed.get(name, '0')}] ({version} Debian:12/stable [amd64])"
            for name, version in available.items()
        ],
        "advisories": [],
    }


def recorded_rpm() -> dict:
    return {
        "format": scans.FORMAT,
        "family": "rpm",
        "os_id": "rhel",
        "os_version": "9.4",
        "wanted": [],
        "installed": lines("rpm_qa.txt"),
        "available": lines("dnf_check_update.txt"),
        "advisories": lines("dnf_updateinfo.txt"),
    }


def recorded_dpkg() -> dict:
    return {
        "format": scans.FORMAT,
        "family": "dpkg",
        "os_id": "debian",
        "os_version": "12",
        "wanted": [],
        "installed": lines("dpkg_query.txt"),
        "available": lines("apt_dist_upgrade.txt"),
        "advisories": [],
    }


def recorded_wua() -> dict:
    return json.loads((RECORDED / "wua.json").read_text())


def run(world, structured: dict | None, *, exit_code: int = 0, agent=None):
    """The agent's side, in process: lease the next step and report it."""
    agent = agent or world["agent"]
    [inst] = engine.lease(agent, 4, timezone.now())
    body = make_result(str(inst.pk), "completed", exit_code=exit_code, stdout="ok\n", structured=structured)
    assert engine.ingest_result(agent, body)[0] == 201
    return inst


def scan(world, document: dict, agent=None):
    """A scan requested through the API and run by the agent with ``document`` as its result."""
    agent = agent or world["agent"]
    r = world["psa"].post(
        "/api/v1/patch-scans/", {"assets": [str(agent.asset_id)], "psa_task_id": str(world["task"].pk)}, format="json"
    )
    assert r.status_code == 202, r.content
    run(world, document, agent=agent)
    return r.json()
