"""The built-in Linux keys' scripts, run for real in a subprocess the way the convention says
(docs/profiles.md): parameters as RMM_PARAM_<NAME>, the value on stdout, exit 3 for absent; set
scripts get RMM_DESIRED_VALUE and RMM_COMPARISON too, and a fresh read shows what they did."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

KEYS = Path(__file__).resolve().parents[2] / "profiles" / "keys" / "linux"
ABSENT = 3


def run(key_dir: str, script: str, desired: str | None = None, comparison: str = "equals", /, **params):
    env = {"PATH": os.environ["PATH"], **{f"RMM_PARAM_{p.upper()}": value for p, value in params.items()}}
    if desired is not None:
        env.update(RMM_DESIRED_VALUE=desired, RMM_COMPARISON=comparison)
    done = subprocess.run(
        ["sh", str(KEYS / key_dir / f"{script}.sh")], env=env, capture_output=True, text=True, timeout=30
    )
    return done.returncode, done.stdout


def read(key_dir: str, /, **params):
    return run(key_dir, "read", **params)


SSHD = """# sshd_config
#PermitRootLogin yes
Port 22
permitrootlogin prohibit-password
PermitRootLogin no
AllowUsers alice  bob\t
Empty
"""


def test_file_line_reads_the_first_uncommented_line_of_its_key(tmp_path):
    path = tmp_path / "sshd_config"
    path.write_text(SSHD)
    assert read("file_line", path=str(path), key="PermitRootLogin") == (0, "prohibit-password\n")
    assert read("file_line", path=str(path), key="allowusers") == (0, "alice  bob\n")
    assert read("file_line", path=str(path), key="Port") == (0, "22\n")
    assert read("file_line", path=str(path), key="Empty") == (0, "\n")
    assert read("file_line", path=str(path), key="X11Forwarding") == (ABSENT, "")
    assert read("file_line", path=str(tmp_path / "missing"), key="Port") == (ABSENT, "")


def test_file_line_set_replaces_appends_and_removes(tmp_path):
    path = tmp_path / "sshd_config"
    path.write_text(SSHD)
    path.chmod(0o600)
    assert run("file_line", "set", "no", path=str(path), key="PermitRootLogin")[0] == 0
    assert read("file_line", path=str(path), key="PermitRootLogin") == (0, "no\n")
    assert path.read_text().count("PermitRootLogin no") == 2 and "#PermitRootLogin yes" in path.read_text()
    assert oct(path.stat().st_mode & 0o777) == "0o600"  # rewritten in place
    assert run("file_line", "set", "no", path=str(path), key="X11Forwarding")[0] == 0
    assert path.read_text().endswith("X11Forwarding no\n")
    assert run("file_line", "set", "", "absent", path=str(path), key="PermitRootLogin")[0] == 0
    assert read("file_line", path=str(path), key="PermitRootLogin") == (ABSENT, "")
    assert "#PermitRootLogin yes" in path.read_text()


def test_file_mode_and_owner(tmp_path):
    path = tmp_path / "secret"
    path.write_text("x")
    path.chmod(0o640)
    assert read("file_mode", path=str(path)) == (0, "640\n")
    assert run("file_mode", "set", "600", path=str(path))[0] == 0
    assert read("file_mode", path=str(path)) == (0, "600\n")
    assert run("file_mode", "set", "a+rwx", path=str(path))[0] == 1  # octal only
    assert read("file_mode", path=str(tmp_path / "missing")) == (ABSENT, "")
    me = pwd.getpwuid(os.getuid()).pw_name
    assert read("file_owner", path=str(path)) == (0, f"{me}\n")
    assert read("file_owner", path=str(tmp_path / "missing")) == (ABSENT, "")


def test_sysctl_reads_and_sets_under_a_proc_root(tmp_path):
    (tmp_path / "net" / "ipv4").mkdir(parents=True)
    (tmp_path / "net" / "ipv4" / "ip_forward").write_text("1\n")
    (tmp_path / "net" / "ipv4" / "tcp_rmem").write_text("4096\t131072\t6291456\n")
    root = str(tmp_path)
    assert read("sysctl", name="net.ipv4.ip_forward", proc_root=root) == (0, "1\n")
    assert read("sysctl", name="net.ipv4.tcp_rmem", proc_root=root) == (0, "4096 131072 6291456\n")
    assert read("sysctl", name="net.ipv4.nope", proc_root=root) == (ABSENT, "")
    assert read("sysctl", name="..net.ipv4", proc_root=root)[0] == 2
    assert run("sysctl", "set", "0", name="net.ipv4.ip_forward", proc_root=root)[0] == 0
    assert read("sysctl", name="net.ipv4.ip_forward", proc_root=root) == (0, "0\n")


def test_sysctl_reads_the_real_proc_sys_by_default():
    expected = Path("/proc/sys/kernel/ostype").read_text().strip()
    assert read("sysctl", name="kernel.ostype") == (0, f"{expected}\n")


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="not a Debian system")
def test_package_version_or_absent():
    version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "dpkg"], capture_output=True, text=True).stdout
    assert read("package", package="dpkg") == (0, f"{version}\n")
    assert read("package", package="no-such-package-rmm") == (ABSENT, "")


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="no systemctl")
def test_systemd_unit_enablement_or_absent():
    assert read("systemd_unit_enabled", unit="no-such-unit-rmm.service") == (ABSENT, "")
    listed = subprocess.run(
        ["systemctl", "list-unit-files", "--no-legend", "--no-pager"], capture_output=True, text=True
    ).stdout.split()
    if len(listed) < 2:
        pytest.skip("systemctl lists no unit files here")
    unit, state = listed[0], listed[1]
    assert read("systemd_unit_enabled", unit=unit) == (0, f"{state}\n")


SYSTEMCTL = """#!/bin/sh
# A stand-in systemctl: one file per known unit under UNITS holding its active state.
echo "$*" >> UNITS.log
for unit; do :; done
file="UNITS/$unit"
case $1 in
  show) if [ -f "$file" ]; then echo loaded; else echo not-found; fi ;;
  is-active) state=$(cat "$file" 2>/dev/null || echo inactive); echo "$state"; [ "$state" = active ] ;;
  start) [ -f "$file" ] || { echo "Unit $unit not found." >&2; exit 5; }; echo active > "$file" ;;
  stop) [ -f "$file" ] || { echo "Unit $unit not found." >&2; exit 5; }; echo inactive > "$file" ;;
  *) exit 1 ;;
esac
"""


@pytest.fixture
def systemctl(tmp_path, monkeypatch):
    """A stand-in ``systemctl`` first on PATH; its units' states are files in the folder returned."""
    units, bin_dir = tmp_path / "units", tmp_path / "bin"
    units.mkdir()
    bin_dir.mkdir()
    stub = bin_dir / "systemctl"
    stub.write_text(SYSTEMCTL.replace("UNITS", str(units)))
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return units


def test_systemd_unit_active_reads_starts_and_stops_and_an_unknown_unit_is_absent(systemctl):
    (systemctl / "ssh.service").write_text("inactive\n")
    assert read("systemd_unit_active", unit="ssh.service") == (0, "inactive\n")  # is-active exits 3 for it
    assert run("systemd_unit_active", "set", "active", unit="ssh.service")[0] == 0
    assert read("systemd_unit_active", unit="ssh.service") == (0, "active\n")
    assert run("systemd_unit_active", "set", "inactive", unit="ssh.service")[0] == 0
    assert read("systemd_unit_active", unit="ssh.service") == (0, "inactive\n")
    # is-active says "inactive" for a unit that does not exist: its load state tells it absent
    assert read("systemd_unit_active", unit="nope.service") == (ABSENT, "")
    assert read("systemd_unit_active", unit="")[0] == 2
    # only equals names a state to set; nothing else is asked of systemctl then
    calls = (systemctl.parent / "units.log").read_text()
    assert run("systemd_unit_active", "set", "active", "not_equals", unit="ssh.service")[0] == 2
    assert run("systemd_unit_active", "set", "reloading", unit="ssh.service")[0] == 1
    assert (systemctl.parent / "units.log").read_text() == calls
    assert "start -- ssh.service" in calls and "stop -- ssh.service" in calls


@pytest.mark.skipif(
    shutil.which("systemctl") is None or Path("/run/systemd/system").exists(), reason="systemd runs here"
)
def test_systemd_unit_active_without_a_running_systemd_is_an_error_not_absent():
    code, out = read("systemd_unit_active", unit="ssh.service")
    assert (code, out) == (4, "")


@pytest.mark.skipif(not Path("/run/systemd/system").exists(), reason="systemd does not run here")
def test_systemd_unit_active_state_or_absent():
    assert read("systemd_unit_active", unit="no-such-unit-rmm.service") == (ABSENT, "")
    state = subprocess.run(["systemctl", "is-active", "--", "systemd-journald.service"], capture_output=True, text=True)
    assert read("systemd_unit_active", unit="systemd-journald.service") == (0, state.stdout)
