"""Retention deletes evidence only through a recorded run that keeps the hashes in the history, and
a legal hold on a site or a PSA case stops it."""

import io
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.utils import timezone
from django_q.models import Schedule

from evidence import anchors, retention
from evidence import services as evidence
from evidence.anchors import verify_history
from evidence.models import EvidenceDisposal, RetentionRun, RmmEvidence
from rmm.history.models import HistoryEvent
from tests.helpers import post_json
from tests.support.evidence import World

LATER = timedelta(days=40)


@pytest.fixture
def world(caller, site, other_site, settings):
    settings.RMM_EVIDENCE_RETENTION_DAYS = {"script_result": 30}
    return World(caller, site, other_site, items_per_site=2)


@pytest.fixture
def compliance(caller):
    return caller("comp", "compliance")


def blob_exists(row) -> bool:
    return default_storage.exists(evidence.storage_name(row))


def test_expired_evidence_leaves_through_a_recorded_run_with_its_hash_kept(world):
    anchor = anchors.anchor_history("user:tester")
    assert retention.run_retention(now=timezone.now()).deleted_count == 0  # nothing is 30 days old yet
    run = retention.run_retention("user:tester", now=timezone.now() + LATER)
    assert (run.deleted_count, run.held_count) == (4, 0)
    gone = world.items + world.other_items
    assert not RmmEvidence.objects.filter(pk__in=[r.pk for r in gone]).exists()
    assert all(not blob_exists(r) for r in gone)
    for row in gone:
        tombstone = EvidenceDisposal.objects.get(evidence_id=row.pk)
        assert (tombstone.hash, tombstone.retention_run_id, tombstone.recorded_sequence) == (
            row.hash,
            run.pk,
            row.history_sequence,
        )
        event = HistoryEvent.objects.get(action="evidence.disposed", subject_id=str(row.pk))
        assert event.payload["hash"] == row.hash and event.payload["retention_run"] == str(run.pk)
    assert list(
        HistoryEvent.objects.filter(subject_id=str(run.pk)).values_list("action", flat=True).order_by("sequence")
    ) == ["retention.started", "retention.finished"]
    # The anchor stays (anchors are never deleted), and the history, with the anchors, still verifies.
    assert RmmEvidence.objects.filter(pk=anchor.pk).exists() and blob_exists(anchor)
    assert verify_history().ok


def test_a_legal_hold_on_a_site_or_a_case_stops_deletion_until_released(world, compliance):
    hold = post_json(compliance.client, "/api/v1/evidence/legal-holds/", {"site": "alpha", "reason": "litigation 42"})
    assert hold.status_code == 201, hold.content
    case_hold = post_json(
        compliance.client,
        "/api/v1/evidence/legal-holds/",
        {"psa_case": str(world.other_task.case_id), "reason": "incident review"},
    )
    assert case_hold.status_code == 201
    run = retention.run_retention(now=timezone.now() + LATER)
    assert (run.deleted_count, run.held_count) == (0, 4)
    assert all(blob_exists(r) for r in world.items + world.other_items)
    # Releasing the site's hold lets the next run delete alpha's evidence; the case's hold still keeps beta's.
    released = post_json(
        compliance.client, f"/api/v1/evidence/legal-holds/{hold.json()['id']}/release/", {"reason": "case closed"}
    )
    assert released.status_code == 200 and released.json()["active"] is False
    run = retention.run_retention(now=timezone.now() + LATER)
    assert (run.deleted_count, run.held_count) == (2, 2)
    assert not RmmEvidence.objects.filter(site=world.site).exists()
    assert RmmEvidence.objects.filter(site=world.other_site).count() == 2
    actions = list(HistoryEvent.objects.filter(action__startswith="legal_hold.").values_list("action", flat=True))
    assert actions == ["legal_hold.placed", "legal_hold.placed", "legal_hold.released"]


def test_legal_holds_are_for_compliance_and_admins_within_their_sites(world, caller, site):
    tech = caller("tech", "technician")
    assert post_json(tech.client, "/api/v1/evidence/legal-holds/", {"site": "alpha", "reason": "x"}).status_code == 403
    only_alpha = caller("comp-alpha", "compliance", sites=[site])
    response = post_json(only_alpha.client, "/api/v1/evidence/legal-holds/", {"site": "beta", "reason": "x"})
    assert response.status_code == 400 and "site" in response.json()
    response = post_json(only_alpha.client, "/api/v1/evidence/legal-holds/", {"site": "alpha", "reason": " "})
    assert response.status_code == 400
    hold = post_json(only_alpha.client, "/api/v1/evidence/legal-holds/", {"site": "alpha", "reason": "audit"}).json()
    response = post_json(only_alpha.client, f"/api/v1/evidence/legal-holds/{hold['id']}/release/", {"reason": ""})
    assert response.status_code == 400
    other = caller("comp-beta", "compliance", sites=[world.other_site])
    assert other.get(f"/api/v1/evidence/legal-holds/{hold['id']}/").status_code == 404


def test_the_policy_is_checked_and_anchors_are_never_in_it(settings, db):
    settings.RMM_EVIDENCE_RETENTION_DAYS = {"history_anchor": 10}
    with pytest.raises(ImproperlyConfigured, match="kept forever"):
        retention.policy()
    settings.RMM_EVIDENCE_RETENTION_DAYS = {"no_such_type": 10}
    with pytest.raises(ImproperlyConfigured, match="unknown evidence type"):
        retention.policy()
    assert RetentionRun.objects.count() == 0


def test_the_command_and_the_daily_schedule(world):
    out = io.StringIO()
    call_command("retention_run", stdout=out)
    assert out.getvalue().strip().endswith("(script_result=30d): 0 deleted, 0 kept under legal hold")
    schedule = Schedule.objects.get(name="evidence.retention_run")
    assert (schedule.func, schedule.minutes) == ("evidence.tasks.retention_run", 24 * 60)


def test_an_export_lists_what_retention_removed(
    world, caller, site, django_capture_on_commit_callbacks, settings, tmp_path
):
    import json

    from tests.support.evidence import download, run_export, run_verify, unpack

    retention.run_retention(now=timezone.now() + LATER)
    comp = caller("comp-alpha", "compliance", sites=[site])
    export_id = run_export(comp, django_capture_on_commit_callbacks, settings)
    folder = unpack(download(comp, export_id), tmp_path / "u")
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    assert manifest["items"] == []
    assert {d["hash"] for d in manifest["disposed"]} == {r.hash for r in world.items}
    assert run_verify(folder).returncode == 0
