"""The agent's transport policy (rmm_agent/tls.py): https with a trusted certificate, plain http
only to this machine or when accepted at enrollment, and clear errors when refused."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rmm_agent import tls
from rmm_agent.client import Client, TransportError

from .conftest import TOKEN, FakeServer, make_payload, sign
from .test_cli import agent, enroll


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST", "agent.localhost"]
)
def test_loopback_names_and_addresses(host: str) -> None:
    assert tls.is_loopback(host)


@pytest.mark.parametrize("host", ["rmm.example", "10.0.0.1", "128.0.0.1", "::2", "localhost.example", "0.0.0.0"])
def test_other_hosts_are_not_loopback(host: str) -> None:
    assert not tls.is_loopback(host)


@pytest.mark.parametrize(
    "url", ["https://rmm.example", "http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000"]
)
def test_https_and_loopback_http_are_allowed(url: str) -> None:
    tls.check_server(url)
    Client(url)


def test_plain_http_elsewhere_is_refused_unless_accepted() -> None:
    with pytest.raises(tls.InsecureServer, match=r"refusing plain http to rmm\.example: .*--allow-insecure-http"):
        Client("http://rmm.example")
    with pytest.raises(tls.InsecureServer, match="refusing plain http to 10.1.2.3"):
        Client("http://10.1.2.3:8000")
    Client("http://rmm.example", allow_insecure_http=True)


@pytest.mark.parametrize("url", ["ftp://rmm.example", "file:///etc/passwd", "rmm.example", "https://"])
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(tls.InsecureServer, match="must be https://HOST"):
        Client(url, allow_insecure_http=True)


def test_the_name_in_the_certificate_is_checked(https_fake_server: FakeServer) -> None:
    """The pinned CA vouches for 127.0.0.1 only: the same server reached as localhost is refused."""
    port = https_fake_server.url.rsplit(":", 1)[1]
    trusted = Client(https_fake_server.url, ca_file=https_fake_server.ca_file)
    assert trusted.enroll(TOKEN, {}, []).status == 201
    with pytest.raises(TransportError, match=r"certificate is not trusted \(Hostname mismatch"):
        Client(f"https://localhost:{port}", ca_file=https_fake_server.ca_file).enroll(TOKEN, {}, [])


def test_untrusted_certificate_is_named_clearly(https_fake_server: FakeServer) -> None:
    with pytest.raises(TransportError, match="certificate is not trusted .*enroll with --ca-file"):
        Client(https_fake_server.url).enroll(TOKEN, {}, [])


def test_enrollment_over_plain_http_elsewhere_is_refused_before_the_token_is_used(tmp_path: Path) -> None:
    done = agent("enroll", "--server", "http://rmm.example", "--token", TOKEN, "--state-dir", str(tmp_path / "a"))
    assert done.returncode == 2
    assert "refusing plain http to rmm.example" in done.stderr
    assert not (tmp_path / "a").exists()


def test_a_ca_file_that_is_no_certificate_is_refused(tmp_path: Path, https_fake_server: FakeServer) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate\n")
    done = enroll(https_fake_server, tmp_path / "a", "--ca-file", str(bogus))
    assert done.returncode == 2
    assert f"CA file {bogus} is not a PEM bundle" in done.stderr
    assert https_fake_server.requests == []


def test_the_pinned_ca_is_copied_into_the_state_dir(
    tmp_path: Path, https_fake_server: FakeServer, server_key: Ed25519PrivateKey
) -> None:
    """Later runs trust what enrollment trusted, even once the file given is gone."""
    state_dir = tmp_path / "agent"
    given = tmp_path / "given-ca.pem"
    given.write_bytes(Path(https_fake_server.ca_file).read_bytes())
    assert enroll(https_fake_server, state_dir, "--ca-file", str(given)).returncode == 0
    given.unlink()
    pinned = state_dir / "ca.pem"
    assert pinned.read_bytes() == Path(https_fake_server.ca_file).read_bytes()
    assert stat.S_IMODE(pinned.stat().st_mode) == 0o600
    assert json.loads((state_dir / "config.json").read_text())["ca_file"] == str(pinned)

    payload = make_payload("echo pinned\n")
    https_fake_server.pending = [sign(payload, server_key)]
    done = agent("run", "--state-dir", str(state_dir), "--once")
    assert done.returncode == 0, done.stderr
    assert https_fake_server.results[payload["instruction_id"]]["stdout"] == "pinned\n"


def test_a_run_refuses_plain_http_elsewhere_unless_enrollment_accepted_it(
    tmp_path: Path, fake_server: FakeServer
) -> None:
    state_dir = tmp_path / "agent"
    assert enroll(fake_server, state_dir).returncode == 0
    config = json.loads((state_dir / "config.json").read_text())
    assert config["allow_insecure_http"] is False
    (state_dir / "config.json").write_text(json.dumps({**config, "server": "http://rmm.example"}))
    done = agent("run", "--state-dir", str(state_dir), "--once")
    assert done.returncode == 2
    assert "refusing plain http to rmm.example" in done.stderr

    assert enroll(fake_server, state_dir, "--allow-insecure-http").returncode == 0
    assert json.loads((state_dir / "config.json").read_text())["allow_insecure_http"] is True
