"""Compliance exports: a ZIP that an auditor verifies offline with the verify.py inside it."""

import asyncio
import csv
import hashlib
import importlib.util
import io
import json
import os
import shutil
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.files.storage import default_storage

from evidence import anchors
from evidence import services as evidence
from evidence.models import EvidenceExport
from rmm.access.models import ApiToken
from rmm.engine.events import user_group
from rmm.history.models import HistoryEvent
from tests.helpers import post_json
from tests.support.evidence import World, download, run_export, run_verify, unpack

VERIFY_PY = Path(__file__).resolve().parents[2] / "evidence" / "bundle" / "verify.py"


@pytest.fixture
def world(caller, site, other_site):
    return World(caller, site, other_site)


@pytest.fixture
def compliance(caller, site):
    """Compliance staff granted only the site alpha."""
    return caller("comp-alpha", "compliance", sites=[site])


@pytest.fixture
def bundle(world, compliance, django_capture_on_commit_callbacks, settings, tmp_path):
    """One finished export of alpha's evidence, downloaded and unpacked: (export id, bytes, folder)."""
    export_id = run_export(compliance, django_capture_on_commit_callbacks, settings)
    data = download(compliance, export_id)
    return export_id, data, unpack(data, tmp_path / "unpacked")


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_an_export_answers_202_then_runs_to_done(world, compliance, django_capture_on_commit_callbacks, settings):
    settings.RMM_TASKS_SYNC = True
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = post_json(compliance.client, "/api/v1/evidence/exports/", {"evidence_types": ["script_result"]})
    assert response.status_code == 202
    body = response.json()
    assert (body["status"], body["progress"], body["download"]) == ("queued", 0, None)
    assert response["Location"] == f"/api/v1/evidence/exports/{body['id']}/"
    assert compliance.get(f"/api/v1/evidence/exports/{body['id']}/download/").status_code == 409
    for callback in callbacks:  # the commit: the task runs (inline here, in the cluster in production)
        callback()
    done = compliance.get(f"/api/v1/evidence/exports/{body['id']}/").json()
    assert (done["status"], done["progress"], done["item_count"], done["error"]) == ("done", 100, 3, "")
    assert done["download"] == f"/api/v1/evidence/exports/{body['id']}/download/"


def test_the_bundle_verifies_offline_with_and_without_cryptography(bundle, world):
    export_id, data, folder = bundle
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.txt",
        "blobs",
        "history",
        "index.csv",
        "manifest.json",
        "report.html",
        "report.pdf",
        "server_key.json",
        "signature.json",
        "verify.py",
    ]
    clean = folder.parent / "clean"  # the auditor's copy: nothing of this project beside it
    shutil.copytree(folder, clean)
    fingerprint = anchors.key_fingerprint(anchors.server_public_key())
    for args in ([], ["--pure-python"]):
        done = run_verify(clean, "--fingerprint", fingerprint, *args)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.splitlines()[-1].startswith("VERDICT: PASS")
        assert f"Server key fingerprint: {fingerprint}" in done.stdout
        assert "FAIL" not in done.stdout
    assert "built-in RFC 8032 verifier" in done.stdout
    # The wrong fingerprint is a failure, named.
    done = run_verify(clean, "--fingerprint", "SHA256:" + "0" * 64)
    assert done.returncode == 1 and "FAIL server_key.json: the key is not the one you expected" in done.stdout


@pytest.mark.parametrize("target", ["blob", "manifest", "segment", "anchor"])
def test_one_flipped_byte_is_a_named_failure(bundle, target):
    _export_id, _data, folder = bundle
    manifest = json.loads((folder / "manifest.json").read_text())
    item = manifest["items"][0]
    path = {
        "blob": folder / item["blob"],
        "manifest": folder / "manifest.json",
        "segment": folder / "history" / "segment.jsonl",
        "anchor": folder / manifest["anchors"][0]["file"],
    }[target]
    flip_one_byte(path)
    done = run_verify(folder)
    assert done.returncode == 1, done.stdout
    assert done.stdout.splitlines()[-1].startswith("VERDICT: FAIL")
    fails = [line for line in done.stdout.splitlines() if line.startswith("FAIL ")]
    relative = str(path.relative_to(folder))
    expected = {
        "blob": f"FAIL {relative} (item {item['id']}): does not match its recorded hash (altered)",
        "manifest": "FAIL manifest.json: does not match the digest the server signed (altered)",
        "segment": "FAIL history/segment.jsonl: does not match its digest in the manifest (altered)",
        "anchor": f"FAIL {relative}: its content does not match the hash in its name (altered)",
    }[target]
    assert expected in fails, fails
    if target == "segment":  # the event itself is named too, not only the file's digest
        assert any(line.startswith("FAIL history/segment.jsonl event ") or " line " in line for line in fails), fails


def test_the_bundle_holds_what_an_auditor_reads(bundle, world):
    export_id, _data, folder = bundle
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == "rmm-evidence-export/1"
    assert manifest["export"]["id"] == export_id and manifest["export"]["sites"] == ["alpha"]
    by_id = {i["id"]: i for i in manifest["items"]}
    assert set(by_id) == {str(r.pk) for r in world.items}  # alpha's only
    row = world.items[0]
    item = by_id[str(row.pk)]
    assert item["hash"] == row.hash and item["evidence_type"] == "script_result"
    assert item["asset"] == {"id": str(world.asset.pk), "hostname": "alpha-1"}
    assert item["authority"] == {"psa_case_id": str(world.task.case_id), "psa_task_id": str(world.task.pk)}
    assert item["history_sequence"] == row.history_sequence
    assert item["summary"]["what"] == "script: fix-0 v1"
    assert item["summary"]["approved_by"] == "job: approver; version: approver"
    assert hashlib.sha256((folder / item["blob"]).read_bytes()).hexdigest() == row.hash
    rows = list(csv.DictReader(io.StringIO((folder / "index.csv").read_text())))
    assert {r["id"] for r in rows} == set(by_id) and rows[0]["site"] == "alpha"
    html = (folder / "report.html").read_text()
    assert (
        "fix-0 v1" in html and "Patch Tuesday" in html and anchors.key_fingerprint(anchors.server_public_key()) in html
    )
    # Events of the other site are in the segment only as digests: their links are proved, their content unseen.
    lines = [json.loads(x) for x in (folder / "history" / "segment.jsonl").read_text().splitlines()]
    withheld = [e for e in lines if e.get("withheld")]
    assert withheld and all(set(e) == {"sequence", "prev_hash", "hash", "body_sha256", "withheld"} for e in withheld)
    assert "beta" not in (folder / "history" / "segment.jsonl").read_text()
    assert manifest["history"]["withheld"] == len(withheld)


def test_the_pdf_report_is_a_readable_pdf(bundle):
    from pypdf import PdfReader

    _export_id, _data, folder = bundle
    reader = PdfReader(folder / "report.pdf")
    text = "\n".join(page.extract_text() for page in reader.pages)
    assert "RMM evidence export" in text and "fix-0 v1" in text and "How to verify" in text


def test_the_export_is_recorded_in_the_history(bundle, compliance):
    export_id, data, _folder = bundle
    actions = dict(
        HistoryEvent.objects.filter(subject_id=export_id).values_list("action", "payload").order_by("sequence")
    )
    requested_through = str(ApiToken.objects.get(user=compliance.user).pk)  # requested with its token
    assert actions["evidence_export.requested"] == {"filters": {}, "api_token": requested_through}
    finished = actions["evidence_export.finished"]
    assert finished["bundle_sha256"] == hashlib.sha256(data).hexdigest()
    assert finished["items"] == 3
    assert actions["evidence_export.downloaded"] == {
        "bundle_sha256": finished["bundle_sha256"],
        "api_token": requested_through,
    }
    export = EvidenceExport.objects.get(pk=export_id)
    assert export.file_hash == finished["bundle_sha256"]


def test_a_tampered_stored_bundle_is_not_served(bundle, compliance):
    export_id, _data, _folder = bundle
    export = EvidenceExport.objects.get(pk=export_id)
    with open(default_storage.path(export.file_name), "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00")
    response = compliance.get(f"/api/v1/evidence/exports/{export_id}/download/")
    assert response.status_code == 409
    assert response.json() == {"detail": "The stored bundle does not match the hash recorded when it was made."}


def test_a_damaged_blob_is_exported_as_found_and_flagged(
    world, compliance, django_capture_on_commit_callbacks, settings, tmp_path
):
    path = Path(default_storage.path(evidence.storage_name(world.items[1])))
    path.write_bytes(path.read_bytes().replace(b"done", b"DONE"))
    export_id = run_export(compliance, django_capture_on_commit_callbacks, settings)
    status = compliance.get(f"/api/v1/evidence/exports/{export_id}/").json()
    assert status["status"] == "done" and "1 item(s) have a damaged or missing blob" in status["error"]
    done = run_verify(unpack(download(compliance, export_id), tmp_path / "u"))
    assert done.returncode == 1
    assert f"(item {world.items[1].pk}): the server reported: the stored blob does not match its recorded hash" in (
        done.stdout
    )


def test_only_compliance_and_admins_export_and_only_their_sites(world, caller, compliance, site, other_site):
    tech = caller("tech", "technician")
    response = post_json(tech.client, "/api/v1/evidence/exports/", {})
    assert response.status_code == 403
    assert HistoryEvent.objects.filter(action="refused.evidence_export.request", actor="user:tech").exists()
    for body, field in [
        ({"site": "beta"}, "site"),
        ({"assets": [str(world.other_asset.pk)]}, "assets"),
        ({"assets": ["beta-1"]}, "assets"),
        ({"psa_case": str(world.other_task.case_id)}, "psa_case"),
        ({"evidence_types": ["history_anchor"]}, "evidence_types"),
        ({"since": "2026-02-01", "until": "2026-01-01"}, "until"),
    ]:
        response = post_json(compliance.client, "/api/v1/evidence/exports/", body)
        assert response.status_code == 400, (body, response.content)
        assert field in response.json(), response.json()
    admin = caller("adm", "admin")
    assert post_json(admin.client, "/api/v1/evidence/exports/", {"site": "beta"}).status_code == 202


def test_an_export_is_its_requesters_alone(bundle, caller, site):
    export_id, _data, _folder = bundle
    colleague = caller("comp-2", "compliance", sites=[site])
    assert colleague.get(f"/api/v1/evidence/exports/{export_id}/").status_code == 404
    assert colleague.get(f"/api/v1/evidence/exports/{export_id}/download/").status_code == 404
    assert colleague.get("/api/v1/evidence/exports/").json()["count"] == 0


def test_filters_choose_the_items(world, compliance, django_capture_on_commit_callbacks, settings, tmp_path):
    from tests.support.evidence import record_item

    second_task = __import__("tests.helpers", fromlist=["approved_authority"]).approved_authority(
        world.site, world.psa.user
    )
    extra = record_item(world.asset, second_task, n=9)
    export_id = run_export(
        compliance, django_capture_on_commit_callbacks, settings, site="alpha", psa_case=str(second_task.case_id)
    )
    folder = unpack(download(compliance, export_id), tmp_path / "u")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [i["id"] for i in manifest["items"]] == [str(extra.pk)]
    assert run_verify(folder).returncode == 0


def test_progress_is_pushed_live_to_the_requester(world, compliance, django_capture_on_commit_callbacks, settings):
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(user_group(compliance.user.pk), channel)

    async def drain():
        got = []
        while True:
            try:
                got.append(await asyncio.wait_for(layer.receive(channel), timeout=0.2))
            except TimeoutError:
                return got

    export_id = run_export(compliance, django_capture_on_commit_callbacks, settings)
    events = [m["event"] for m in async_to_sync(drain)() if m["event"].get("id") == export_id]
    async_to_sync(layer.group_discard)(user_group(compliance.user.pk), channel)
    statuses = [e["status"] for e in events]
    assert statuses[0] == "queued" and "running" in statuses and statuses[-1] == "done"
    assert events[-1]["progress"] == 100 and events[-1]["download"].endswith(f"/{export_id}/download/")
    assert all(e["type"] == "evidence_export" for e in events)


def test_the_console_page_asks_for_an_export_and_lists_it(
    world, compliance, client, django_capture_on_commit_callbacks, settings
):
    settings.RMM_TASKS_SYNC = True
    client.force_login(compliance.user)
    page = client.get("/console/evidence/exports/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="export-form"' in html and "evidence/exports.js" in html
    assert "<script>" not in html and "<script " not in html.replace('<script src="', "")  # no inline script
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/console/evidence/exports/",
            {"site": "alpha", "assets": "alpha-1", "evidence_types": ["script_result"], "since": "2020-01-01"},
        )
    assert response.status_code == 302
    export = EvidenceExport.objects.get(requested_by=compliance.user)
    assert export.status == "done" and export.item_count == 3
    assert export.filters["assets"] == [str(world.asset.pk)]
    listed = client.get("/console/evidence/exports/").content.decode()
    assert f'data-export-id="{export.pk}"' in listed and f"/api/v1/evidence/exports/{export.pk}/download/" in listed
    # A technician sees the page but no form.
    tech = __import__("rmm.access.services", fromlist=["x"]).ensure_user_with_role("tech-c", "technician")
    client.force_login(tech)
    assert "may not export" in client.get("/console/evidence/exports/").content.decode()


# --- the pure-Python Ed25519 in verify.py, against signatures made by `cryptography` ------------------


def load_verify_module():
    spec = importlib.util.spec_from_file_location("bundle_verify", VERIFY_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_builtin_ed25519_verifier_agrees_with_cryptography():
    verify = load_verify_module().ed25519_verify_pure
    for n in range(6):
        key = Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        message = os.urandom(n * 37)
        signature = key.sign(message)
        assert verify(public, message, signature)
        assert not verify(public, message + b"x", signature)
        bad = bytearray(signature)
        bad[n] ^= 0x40
        assert not verify(public, message, bytes(bad))
        other = (
            Ed25519PrivateKey.generate()
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
        assert not verify(other, message, signature)


def test_the_builtin_ed25519_verifier_passes_rfc_8032_test_vectors():
    verify = load_verify_module().ed25519_verify_pure
    # RFC 8032, section 7.1, TEST 1 and TEST 2.
    public = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    signature = bytes.fromhex(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    assert verify(public, b"", signature)
    public = bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
    signature = bytes.fromhex(
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
    )
    assert verify(public, bytes.fromhex("72"), signature)
    assert not verify(public, bytes.fromhex("73"), signature)
    # A signature whose S is not reduced (S >= q) is refused, as the RFC requires.
    q = 2**252 + 27742317777372353535851937790883648493
    s = int.from_bytes(signature[32:], "little") + q
    assert not verify(public, bytes.fromhex("72"), signature[:32] + s.to_bytes(32, "little"))


def test_a_bundle_is_refused_once_its_sites_are_no_longer_visible(bundle, compliance, site):
    from guardian.shortcuts import remove_perm

    export_id, _data, _folder = bundle
    assert EvidenceExport.objects.get(pk=export_id).site_ids == [str(site.pk)]
    remove_perm("inventory.access_site", compliance.user, site)
    response = compliance.get(f"/api/v1/evidence/exports/{export_id}/download/")
    assert response.status_code == 403
    assert response.json() == {"detail": "This export covers sites you may no longer see."}
    assert HistoryEvent.objects.filter(action="refused.evidence_export.download", subject_id=export_id).exists()


def test_the_proxy_sends_the_bundle_where_configured(bundle, compliance, settings):
    """With RMM_EVIDENCE_ACCEL_REDIRECT the server still checks the caller and the bundle's hash,
    records the download, and leaves the bytes to nginx (X-Accel-Redirect)."""
    settings.RMM_EVIDENCE_ACCEL_REDIRECT = "/_blobs/"
    export_id, _data, _folder = bundle
    export = EvidenceExport.objects.get(pk=export_id)
    response = compliance.get(f"/api/v1/evidence/exports/{export_id}/download/")
    assert response.status_code == 200 and response.content == b""
    assert response["X-Accel-Redirect"] == "/_blobs/" + export.file_name
    assert response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"] == f'attachment; filename="rmm-evidence-{export_id}.zip"'
    assert response["X-Content-SHA256"] == export.file_hash
    downloads = HistoryEvent.objects.filter(action="evidence_export.downloaded", subject_id=export_id)
    assert downloads.count() == 2  # the fixture's download, then this one

    with open(default_storage.path(export.file_name), "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00")
    assert compliance.get(f"/api/v1/evidence/exports/{export_id}/download/").status_code == 409
