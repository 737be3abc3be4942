import os
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.e2e.psa import PsaReceiver
from tests.e2e.server import Server


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing end-to-end test shows its server's side too: the log's errors and 5xx answers
    (and the agents' lines, which ``rmm_run`` writes to the same log)."""
    report = yield
    if report.failed and call.when == "call":
        for name in ("server", "product"):
            srv = item.funcargs.get(name)
            if isinstance(srv, Server):
                report.sections.append((f"server log ({name})", srv.diagnostics()))
    return report


@pytest.fixture(scope="session")
def psa_receiver():
    receiver = PsaReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory, psa_receiver):
    srv = Server(
        tmp_path_factory.mktemp("e2e"),
        {"RMM_PSA_WEBHOOK_URL": psa_receiver.url, "RMM_PSA_WEBHOOK_SECRET": psa_receiver.secret},
    ).start()
    yield srv
    srv.stop()


CHROMIUM = Path("/usr/bin/chromium")  # Debian's chromium, never a downloaded browser
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    """Playwright driving Debian's chromium; missing chromium fails in CI and skips elsewhere.

    Module scope: Playwright's sync API keeps an event loop running in this thread while it is
    open, and Django refuses database calls from a thread with a running loop.
    """
    if not CHROMIUM.exists():
        reason = "Debian's chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def deb(tmp_path):
    """A .deb (dpkg-deb) of a package no real one is named, version 1.0-1: its name and path; it is
    purged afterwards (the deployment tests install it as root)."""
    name = f"rmm-e2e-hello-{uuid.uuid4().hex[:8]}"
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/share" / name).mkdir(parents=True)
    (root / "usr/share" / name / "hello").write_text("hello from a deployment\n")
    (root / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: 1.0-1\nArchitecture: all\nMaintainer: RMM tests <tests@example.invalid>\n"
        "Description: a package built by the RMM's deployment test\n"
    )
    out = tmp_path / f"{name}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(out)], check=True, capture_output=True)
    yield name, out
    subprocess.run(["dpkg", "--purge", name], capture_output=True)
