"""The evidence store: blobs by content hash, never overwritten, rechecked on every read; records
the database will not change; who may read which evidence (site scope), and per PSA case."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.files.storage import default_storage
from django.db import DatabaseError, connection, transaction

from evidence import services as evidence
from evidence.models import RmmEvidence
from rmm.core.errors import Conflict
from rmm.history.models import HistoryEvent
from tests.support.evidence import World

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def world(caller, site, other_site):
    return World(caller, site, other_site)


def blob_path(row) -> Path:
    return Path(default_storage.path(evidence.storage_name(row)))


def test_a_blob_is_stored_under_its_hash_and_the_record_names_its_history_event(world):
    row = world.items[0]
    data = blob_path(row).read_bytes()
    assert hashlib.sha256(data).hexdigest() == row.hash
    assert row.storage_uri == f"storage://default/evidence/{row.hash[:2]}/{row.hash}.json"
    event = HistoryEvent.objects.get(sequence=row.history_sequence)
    assert (event.action, event.subject_id, event.payload["hash"]) == ("evidence.recorded", str(row.pk), row.hash)
    assert (row.site_id, row.psa_case_id, row.psa_task_id) == (world.site.pk, world.task.case_id, world.task.pk)


def test_storing_the_same_content_again_leaves_the_blob_alone(world):
    row = world.items[0]
    data = blob_path(row).read_bytes()
    before = os.stat(blob_path(row)).st_mtime_ns
    # Other blobs may share the two-character prefix folder: compare the folder, not one name.
    files_before = sorted(os.listdir(blob_path(row).parent))
    assert evidence.store_blob(data) == (row.hash, row.storage_uri)
    assert os.stat(blob_path(row)).st_mtime_ns == before
    assert sorted(os.listdir(blob_path(row).parent)) == files_before
    assert blob_path(row).name in files_before


def test_a_blob_is_never_overwritten_even_to_repair_it(world):
    """A tampered blob stays as found (it is evidence of the tampering) and storing is refused, loudly."""
    row = world.items[0]
    original = blob_path(row).read_bytes()
    blob_path(row).write_bytes(b'{"forged":true}')
    with pytest.raises(Conflict, match="has been altered"):
        evidence.store_blob(original)
    assert blob_path(row).read_bytes() == b'{"forged":true}'
    assert HistoryEvent.objects.filter(action="refused.evidence.store").exists()


def test_reading_rechecks_the_hash_and_a_tampered_blob_answers_409(world, caller):
    tech = caller("tech", "technician")
    row = world.items[0]
    ok = tech.get(f"/api/v1/evidence/{row.pk}/content/")
    assert ok.status_code == 200 and ok["X-Content-SHA256"] == row.hash
    blob_path(row).write_bytes(ok.content.replace(b"done", b"DONE"))
    response = tech.get(f"/api/v1/evidence/{row.pk}/content/")
    assert response.status_code == 409
    assert response.json() == {"detail": "The stored evidence blob does not match its recorded hash."}
    refusal = HistoryEvent.objects.filter(action="refused.evidence.read").latest("sequence")
    assert refusal.subject_id == str(row.pk) and refusal.payload["reason"] == "blob does not match its hash"


def test_a_missing_blob_answers_409_not_500(world, caller):
    row = world.items[1]
    blob_path(row).unlink()
    response = caller("tech", "technician").get(f"/api/v1/evidence/{row.pk}/content/")
    assert response.status_code == 409
    assert response.json() == {"detail": "The evidence blob is missing from the store."}


def test_the_database_refuses_to_change_or_delete_evidence(world):
    row = world.items[0]
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        RmmEvidence.objects.filter(pk=row.pk).update(hash="0" * 64)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        RmmEvidence.objects.filter(pk=row.pk).delete()
    if connection.vendor == "postgresql":  # TRUNCATE is refused too (after the test's deferred FK checks run)
        with connection.cursor() as cur:
            cur.execute("SET CONSTRAINTS ALL IMMEDIATE")
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cur:
            # CASCADE: tables that cite evidence (configuration_observations, …) would refuse first
            cur.execute("TRUNCATE evidence_rmmevidence CASCADE")
    assert RmmEvidence.objects.get(pk=row.pk).hash == row.hash


def test_compliance_sees_only_its_sites_evidence(world, caller):
    comp = caller("comp-alpha", "compliance", sites=[world.site])
    listed = comp.get("/api/v1/evidence/").json()["results"]
    assert {r["id"] for r in listed} == {str(r.pk) for r in world.items}
    assert {r["site"] for r in listed} == {"alpha"}
    other = world.other_items[0]
    assert comp.get(f"/api/v1/evidence/{other.pk}/").status_code == 404
    assert comp.get(f"/api/v1/evidence/{other.pk}/content/").status_code == 404
    assert HistoryEvent.objects.filter(action="refused.access", payload__object=f"evidence.rmmevidence:{other.pk}")


def test_anchors_belong_to_no_site_and_are_listed_for_all_site_holders_only(world, caller):
    from evidence import anchors

    anchor = anchors.anchor_history("user:tester")
    everywhere = caller("comp-all", "compliance")
    assert everywhere.get(f"/api/v1/evidence/{anchor.pk}/").status_code == 200
    one_site = caller("comp-alpha", "compliance", sites=[world.site])
    assert one_site.get(f"/api/v1/evidence/{anchor.pk}/").status_code == 404


def test_a_psa_case_lists_its_evidence_for_the_psa_to_attach(world, caller):
    case_id = world.task.case_id
    listed = world.psa.get(f"/api/v1/psa/cases/{case_id}/evidence/").json()
    assert listed["count"] == 3
    assert {r["id"] for r in listed["results"]} == {str(r.pk) for r in world.items}
    assert all(r["psa_case_id"] == str(case_id) for r in listed["results"])
    # Every role may read evidence in its sites; outside them the case does not exist.
    tech = caller("tech-alpha", "technician", sites=[world.site])
    assert tech.get(f"/api/v1/psa/cases/{case_id}/evidence/").json()["count"] == 3
    response = tech.get(f"/api/v1/psa/cases/{world.other_task.case_id}/evidence/")
    assert response.status_code == 404
    assert tech.get("/api/v1/psa/cases/00000000-0000-0000-0000-000000000001/evidence/").status_code == 404


def test_the_signing_key_is_published_for_auditors(world, caller):
    from evidence import anchors

    answer = caller("tech", "technician").get("/api/v1/evidence/signing-key/").json()
    assert answer["algorithm"] == "Ed25519"
    assert answer["fingerprint"] == anchors.key_fingerprint(anchors.server_public_key())
    assert (
        answer["fingerprint"]
        == "SHA256:" + hashlib.sha256(__import__("base64").b64decode(answer["public_key"])).hexdigest()
    )


def test_s3_is_configured_from_the_environment(tmp_path):
    """No S3 is reachable here, so this checks configuration only: the backend, no overwriting, the URI."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PYTEST")},
        "RMM_VAR_DIR": str(tmp_path),
        "RMM_EVIDENCE_STORAGE": "s3",
        "RMM_EVIDENCE_S3_BUCKET": "audit-evidence",
        "RMM_EVIDENCE_S3_PREFIX": "rmm-prod",
        "RMM_EVIDENCE_S3_ENDPOINT_URL": "https://s3.example.invalid",
        "DJANGO_SETTINGS_MODULE": "rmm.settings",
    }
    code = """
import importlib, os, django
django.setup()
from django.core.files.storage import storages
from evidence.services import store_label
s = storages["default"]
print(type(s).__name__, s.file_overwrite, store_label())
del os.environ["RMM_EVIDENCE_S3_BUCKET"]
import rmm.settings
try:
    importlib.reload(rmm.settings)
except Exception as exc:
    print(type(exc).__name__, "RMM_EVIDENCE_S3_BUCKET" in str(exc))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "S3Storage",
        "False",
        "s3://audit-evidence/rmm-prod",
        "ImproperlyConfigured",  # and without a bucket, the settings refuse to load
        "True",
    ]
