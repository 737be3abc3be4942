"""Where the private signing keys come from: a file only the server's account can read (the server
refuses to start otherwise, saying which file and how to fix it), or an environment-provided
secret, in which case nothing is written to disk. Each case starts a real ``manage.py``."""

from __future__ import annotations

import base64
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rmm.keys import store
from rmm_agent import keyring

ROOT = Path(__file__).resolve().parents[2]


def manage(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "RMM_", "DATABASE_URL"))}
    environ.update(
        DJANGO_SETTINGS_MODULE="rmm.settings",
        RMM_VAR_DIR=str(tmp_path / "var"),
        RMM_SQLITE_PATH=str(tmp_path / "db.sqlite3"),
        **env,
    )
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120
    )


def key_file(path: Path, mode: int = 0o600) -> Path:
    store.write_private(path, store.pem(Ed25519PrivateKey.generate()))
    os.chmod(path, mode)
    return path


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o700)
    return directory


def test_a_key_file_others_can_read_stops_the_server(tmp_path, key_dir):
    path = key_file(key_dir / "instructions-1.pem", 0o640)
    done = manage(tmp_path, "check", RMM_SIGNING_KEY_DIR=str(key_dir))
    assert done.returncode != 0
    assert (
        f"The signing key file {path} is readable or writable by others (mode 0640): chmod 600 it, "
        "and treat the key as exposed." in done.stderr
    )
    os.chmod(path, 0o600)
    assert manage(tmp_path, "check", RMM_SIGNING_KEY_DIR=str(key_dir)).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another account needs root")
def test_a_key_file_of_another_account_stops_the_server(tmp_path, key_dir):
    path = key_file(key_dir / "instructions-1.pem")
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chown(path, nobody, -1)
    done = manage(tmp_path, "check", RMM_SIGNING_KEY_DIR=str(key_dir))
    assert done.returncode != 0
    assert f"The signing key file {path} is owned by uid {nobody}, not by the server's account (uid 0)" in done.stderr


def test_a_key_directory_others_can_write_stops_the_server(tmp_path, key_dir):
    key_file(key_dir / "instructions-1.pem")
    os.chmod(key_dir, 0o770)
    done = manage(tmp_path, "check", RMM_SIGNING_KEY_DIR=str(key_dir))
    assert done.returncode != 0
    assert f"The signing key directory {key_dir} is writable by others (mode 0770): chmod 700 it." in done.stderr


def test_a_legacy_key_file_is_checked_too(tmp_path):
    path = key_file(tmp_path / "server_ed25519.pem", 0o604)
    done = manage(tmp_path, "check", RMM_SIGNING_KEY_FILE=str(path))
    assert done.returncode != 0
    assert f"The signing key file {path} is readable or writable by others (mode 0604)" in done.stderr


def test_an_unusable_environment_secret_stops_the_server(tmp_path):
    done = manage(tmp_path, "check", RMM_SIGNING_KEYS="not a key")
    assert done.returncode != 0
    assert "RMM_SIGNING_KEYS is neither PEM nor base64 of PEM." in done.stderr


def test_keys_from_the_environment_are_used_and_nothing_is_written_to_disk(tmp_path, key_dir):
    """The operator generates the keys, puts them in the secret (base64 of the PEMs), and registers
    each once with --key-file; every process then signs with them from the environment."""
    instructions, evidence = key_file(key_dir / "instructions.pem"), key_file(key_dir / "evidence.pem")
    releases = key_file(key_dir / "releases.pem")
    secret = base64.b64encode(instructions.read_bytes() + evidence.read_bytes() + releases.read_bytes()).decode()
    env = {"RMM_SIGNING_KEYS": secret}
    assert manage(tmp_path, "migrate", "--noinput", **env).returncode == 0
    refused = manage(tmp_path, "rmm_signing_key", "rotate", "--purpose", "instructions", **env)
    assert refused.returncode != 0 and "pass --key-file" in refused.stderr
    for purpose, path in (("instructions", instructions), ("evidence", evidence), ("releases", releases)):
        done = manage(tmp_path, "rmm_signing_key", "rotate", "--purpose", purpose, "--key-file", str(path), **env)
        assert done.returncode == 0, done.stderr
    listed = manage(tmp_path, "rmm_signing_key", "list", **env).stdout.splitlines()
    assert len(listed) == 3 and all("signing" in line and "private key here" in line for line in listed)
    # Signing an anchor uses the evidence key from the environment.
    done = manage(tmp_path, "anchor_history", **env)
    assert done.returncode == 0, done.stderr
    fingerprint = keyring.fingerprint(store.raw_public(store.parse_keys(evidence.read_bytes(), "evidence")[0]))
    assert done.stdout.strip().endswith(f"key {fingerprint}")
    assert not (tmp_path / "var" / "keys" / "signing").exists()
    # Without the secret, the same database's keys have no private half here: nothing signs.
    done = manage(tmp_path, "anchor_history")
    assert done.returncode != 0
    assert "No evidence signing key can sign here" in done.stderr
