"""Patching end to end, as root, against a real local apt repository built in the test: packages
made with dpkg-deb under names no real package uses, a ``file:`` source, ``apt-get update``
against that source only. Version 1 installed and version 2 available → the agent's scan reports
it missing → a patch job, approved by a second person, installs it → the re-scan marks it
installed (and version 1 superseded); a package whose post-install script fails is left
``failed``. The evidence exports and verifies offline. Everything is purged, and the source and
its lists removed, afterwards."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import uuid
from email.utils import formatdate
from pathlib import Path

import pytest

from tests.e2e.flows import agent_once, make_world, privileged_approver
from tests.e2e.server import Server
from tests.e2e.test_key_rotation import export_bundle, verify_offline

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="installing packages needs root (CI runs as root)"),
    pytest.mark.skipif(not (shutil.which("dpkg-deb") and shutil.which("apt-get")), reason="needs dpkg and apt"),
]

LISTS = Path("/var/lib/apt/lists")


def build(folder: Path, name: str, version: str, postinst: str = "") -> Path:
    root = folder / f"{name}-{version}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/share" / name).mkdir(parents=True)
    (root / "usr/share" / name / "version").write_text(f"{version}\n")
    (root / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: RMM tests <tests@example.invalid>\n"
        "Description: a package built by the RMM's patching test\n"
    )
    if postinst:
        (root / "DEBIAN/postinst").write_text(postinst)
        (root / "DEBIAN/postinst").chmod(0o755)
    out = folder / f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(out)], check=True, capture_output=True)
    shutil.rmtree(root)
    return out


def index(repo: Path) -> None:
    """A flat repository's Packages file (each .deb's control fields, file name, size and sha256)
    and its Release file (unsigned: the source is marked trusted), without which apt looks for
    compressed indexes that are not there."""
    stanzas = []
    for deb in sorted(repo.glob("*.deb")):
        control = subprocess.run(["dpkg-deb", "-f", str(deb)], check=True, capture_output=True, text=True).stdout
        data = deb.read_bytes()
        stanzas.append(
            control.rstrip("\n")
            + f"\nFilename: ./{deb.name}\nSize: {len(data)}\nSHA256: {hashlib.sha256(data).hexdigest()}\n"
        )
    packages = "\n".join(stanzas).encode()
    (repo / "Packages").write_bytes(packages)
    (repo / "Release").write_text(
        f"Origin: rmm-e2e\nLabel: rmm-e2e\nDate: {formatdate(usegmt=True)}\nSHA256:\n"
        f" {hashlib.sha256(packages).hexdigest()} {len(packages)} Packages\n"
    )


def status(name: str) -> str:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Status} ${Version}", name], capture_output=True, text=True, check=False
    )
    return done.stdout


@pytest.fixture
def repo(tmp_path_factory):
    """Two packages at version 1 installed, version 2 of each in a local apt source; the second's
    version 2 fails in its post-install script. Purged and removed afterwards."""
    tag = uuid.uuid4().hex[:8]
    good, bad = f"zz-rmm-e2e-good-{tag}", f"zz-rmm-e2e-bad-{tag}"
    # apt reads a file: source as its _apt user: a folder it can reach, not under pytest's 0700 one
    folder = Path(tempfile.gettempdir()) / f"rmm-e2e-apt-{tag}"
    folder.mkdir(mode=0o755)
    installed = tmp_path_factory.mktemp("installed-debs")
    old = [build(installed, good, "1.0-1"), build(installed, bad, "1.0-1")]
    build(folder, good, "1.0-2")
    build(folder, bad, "1.0-2", postinst='#!/bin/sh\n[ "$1" = configure ] && exit 1\nexit 0\n')
    index(folder)
    source = Path(f"/etc/apt/sources.list.d/rmm-e2e-{tag}.list")
    try:
        subprocess.run(["dpkg", "-i", *map(str, old)], check=True, capture_output=True)
        source.write_text(f"deb [trusted=yes] file:{folder} ./\n")
        # This source only, and the other sources' lists kept as they are.
        updated = subprocess.run(
            [
                "apt-get",
                "update",
                "-q",
                "-o",
                f"Dir::Etc::sourcelist={source}",
                "-o",
                "Dir::Etc::sourceparts=-",
                "-o",
                "APT::Get::List-Cleanup=0",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert updated.returncode == 0 and "Err:" not in updated.stdout, updated.stdout + updated.stderr
        yield good, bad
    finally:
        subprocess.run(["dpkg", "--purge", good, bad], capture_output=True, check=False)
        source.unlink(missing_ok=True)
        for listed in LISTS.glob(f"*rmm-e2e-apt-{tag}*"):
            listed.unlink()
        shutil.rmtree(folder, ignore_errors=True)


def patch_rows(server: Server, w: dict, *products: str) -> list[dict]:
    """The asset's rows of these packages (the host's own packages are there too)."""
    rows = []
    for product in products:
        path = f"/api/v1/assets/{w['asset']}/patches/?product={product}"
        rows += server.request("GET", path, token=w["psa"]).json()["results"]
    return rows


def row(rows: list[dict], product: str, version: str) -> dict | None:
    return next((r for r in rows if (r["patch"]["product"], r["patch"]["patch_id"]) == (product, version)), None)


def patch_job(server: Server, w: dict, approver: str, patch_id: str, policy: str) -> dict:
    body = {"assets": [w["asset"]], "psa_task_id": w["task"], "patches": [patch_id], "reboot_policy": policy}
    r = server.request("POST", "/api/v1/patch-jobs/", body, w["psa"])
    assert r.status == 201, r.body
    made = r.json()
    assert made["status"] == "awaiting_approval" and made["psa_case_id"]
    # The requester never approves; a second person with the privileged permission does.
    assert server.request("POST", f"/api/v1/patch-jobs/{made['id']}/approve/", token=w["psa"]).status == 403
    r = server.request("POST", f"/api/v1/patch-jobs/{made['id']}/approve/", token=approver)
    assert r.status == 200 and r.json()["status"] == "running", r.body
    agent_once(server, w)  # the install, as root
    agent_once(server, w)  # the re-scan
    return server.request("GET", f"/api/v1/patch-jobs/{made['id']}/", token=w["psa"]).json()


def test_a_missing_patch_is_scanned_installed_by_an_approved_patch_job_and_proven_by_the_rescan(repo, tmp_path):
    good, bad = repo
    mark = tmp_path / "rebooted"
    env = {"RMM_AGENT_REBOOT_COMMAND": f"touch {mark}", "RMM_AGENT_REBOOT_REQUIRED_PATH": str(tmp_path / "none")}
    (tmp_path / "server").mkdir()
    server = Server(tmp_path / "server", env).start()
    try:
        w = make_world(server)
        approver = privileged_approver(server)
        r = server.request("POST", "/api/v1/patch-scans/", {"assets": [w["asset"]], "psa_task_id": w["task"]}, w["psa"])
        assert r.status == 202, r.body
        agent_once(server, w)
        rows = patch_rows(server, w, good, bad)
        assert row(rows, good, "1.0-1")["status"] == "installed" and row(rows, good, "1.0-2")["status"] == "missing"
        assert row(rows, bad, "1.0-2")["status"] == "missing"
        assert row(rows, good, "1.0-2")["patch"]["vendor"] == "debian"

        done = patch_job(server, w, approver, row(rows, good, "1.0-2")["patch"]["id"], "if_required")
        assert done["status"] == "completed" and done["progress"] == {"succeeded": 1}, done
        assert status(good) == "installed 1.0-2"
        rows = patch_rows(server, w, good, bad)
        assert row(rows, good, "1.0-2")["status"] == "installed" and row(rows, good, "1.0-2")["installed_at"]
        assert row(rows, good, "1.0-1")["status"] == "superseded"
        assert not mark.exists()  # if_required, and the endpoint says no reboot is pending

        failed = patch_job(server, w, approver, row(rows, bad, "1.0-2")["patch"]["id"], "never")
        assert failed["jobs"][0]["status"] == "failed", failed
        assert status(bad).startswith("half-configured")
        assert row(patch_rows(server, w, good, bad), bad, "1.0-2")["status"] == "failed"

        evidence = server.request("GET", "/api/v1/evidence/?evidence_type=patch_result", token=w["psa"]).json()
        assert len(evidence["results"]) == 4  # install and re-scan of each job
        compliance = server.token(f"comp-{uuid.uuid4().hex[:6]}", "compliance")
        _, bundle = export_bundle(server, w, compliance, tmp_path / "export")
        manifest = (bundle / "manifest.json").read_text()
        assert all(item["id"] in manifest for item in evidence["results"])
        checked = verify_offline(bundle)
        assert checked.returncode == 0 and "VERDICT: PASS" in checked.stdout, checked.stdout
    finally:
        server.stop()
