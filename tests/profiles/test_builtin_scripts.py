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
