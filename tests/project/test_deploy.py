"""The deployment files in deploy/: the systemd units pass `systemd-analyze verify` (and its offline
security review), and the nginx site passes `nginx -t` inside Debian's own nginx.conf."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from pathlib import Path

import pytest

from deploy.proxy import NGINX, ROOT, Nginx, site
from deploy.tls import certificates
from tests.helpers import check_deploy
from tests.support.tools import require

UNITS = ROOT / "deploy" / "systemd"
# Template units are verified as one instance each, as systemd would start them.
INSTANCES = {"rmm-agent-tier@.service": "rmm-agent-tier@8101.service", "rmm-daphne@.service": "rmm-daphne@8001.service"}
SERVICES = ["rmm-agent-tier@8101.service", "rmm-daphne@8001.service", "rmm-qcluster.service"]


@pytest.fixture
def units(tmp_path: Path) -> Path:
    """The units as installed from this checkout (its path in place of /opt/rmm)."""
    require("systemd-analyze", "systemd")
    for unit in UNITS.iterdir():
        if unit.suffix in (".service", ".target"):
            text = unit.read_text().replace("/opt/rmm/", f"{ROOT}/")
            (tmp_path / INSTANCES.get(unit.name, unit.name)).write_text(text)
    return tmp_path


def analyze(directory: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["systemd-analyze", *args], cwd=directory, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_units_pass_systemd_analyze_verify(units: Path) -> None:
    """verify exits 0 even on an unknown key or a bad value, so any output at all fails."""
    names = sorted(path.name for path in units.iterdir())
    assert names == sorted([*SERVICES, "rmm.target"])
    done = analyze(units, "verify", "--man=no", *names)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_the_agent_package_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    require("systemd-analyze", "systemd")
    unit = tmp_path / "rmm-agent.service"
    unit.write_text((ROOT / "packaging" / "rmm-agent.service").read_text())
    done = analyze(tmp_path, "verify", "--man=no", unit.name)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@pytest.mark.parametrize("service", SERVICES)
def test_each_server_process_is_hardened(units: Path, service: str) -> None:
    """A dedicated account, no privileges, a read-only system: systemd's own review rates it OK."""
    text = (units / service).read_text()
    for option in (
        "User=rmm",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
    ):
        assert option in text
    done = analyze(units, "security", "--offline=true", "--threshold=20", f"./{service}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    level = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert level and float(level.group(1)) <= 2.0, done.stdout[-500:]


def test_the_account_is_made_by_sysusers(tmp_path: Path) -> None:
    require("systemd-sysusers", "systemd")
    config = ROOT / "deploy" / "systemd" / "rmm.sysusers"
    (tmp_path / "etc").mkdir()
    done = subprocess.run(
        ["systemd-sysusers", "--root", str(tmp_path), str(config)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    [entry] = [line for line in (tmp_path / "etc" / "passwd").read_text().splitlines() if line.startswith("rmm:")]
    _name, _pw, uid, _gid, _gecos, home, shell = entry.split(":")
    assert int(uid) < 1000 and home == "/var/lib/rmm" and shell == "/usr/sbin/nologin"
    group = next(line for line in (tmp_path / "etc" / "group").read_text().splitlines() if line.startswith("rmm:"))
    assert group.split(":")[3] == "www-data"  # nginx reads the blob store for X-Accel-Redirect


def test_the_nginx_site_passes_nginx_t(tmp_path: Path) -> None:
    require(NGINX, "nginx")
    _ca, cert, key = certificates(tmp_path)
    text = site(
        https_port=8443, http_port=8080, agent_ports=[8101, 8102], console_port=8001, cert=cert, key=key, blobs=tmp_path
    )
    done = Nginx(tmp_path / "nginx", text).check()
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


def test_check_deploy_is_clean_with_the_shipped_environment(tmp_path: Path) -> None:
    """deploy/rmm.env.example as an operator fills it in: only the secret and the paths differ."""
    shipped = dict(
        line.split("=", 1)
        for line in (ROOT / "deploy" / "rmm.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "RMM_", "DATABASE_URL", "REDIS_URL"))}
    env.update(shipped)
    env.update(
        DJANGO_SETTINGS_MODULE="rmm.settings",
        RMM_SECRET_KEY=secrets.token_urlsafe(64),
        RMM_VAR_DIR=str(tmp_path),
        RMM_EVIDENCE_ROOT=str(tmp_path / "evidence"),
        RMM_SIGNING_KEY_DIR=str(tmp_path / "keys" / "signing"),
    )
    check_deploy(env)
