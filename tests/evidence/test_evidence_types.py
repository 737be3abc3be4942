"""Evidence types are registered by the apps that produce them: a type a new app registers is
recorded, listed, filtered and exported like the script kind's own, with no edit to the
evidence app; an unregistered one is refused, and history anchors are never export items."""

from __future__ import annotations

import json

import pytest

from evidence import services as evidence
from evidence import types
from evidence.models import RmmEvidence
from rmm.core.errors import InvalidInput
from tests.helpers import post_json
from tests.support.evidence import World, download, record_item, run_export, unpack


@pytest.fixture
def patch_type():
    """A type as a patching app would register it in its AppConfig.ready."""
    types.register("vendor_attestation", "A vendor's signed statement")
    yield "vendor_attestation"
    types._types.pop("vendor_attestation")


@pytest.fixture
def world(caller, site, other_site):
    return World(caller, site, other_site, items_per_site=1)


@pytest.fixture
def compliance(caller, site):
    return caller("comp-alpha", "compliance", sites=[site])


def test_an_unregistered_type_is_refused_and_nothing_is_recorded(world):
    before = RmmEvidence.objects.count()
    with pytest.raises(InvalidInput, match="Unknown evidence type 'vendor_attestation'"):
        record_item(world.asset, world.task, evidence_type="vendor_attestation")
    assert RmmEvidence.objects.count() == before


def test_a_registered_type_is_recorded_filtered_and_exported(
    world, compliance, patch_type, django_capture_on_commit_callbacks, settings, tmp_path
):
    item = record_item(world.asset, world.task, n=7, evidence_type=patch_type)
    listed = compliance.client.get("/api/v1/evidence/", {"evidence_type": patch_type}).json()
    assert [row["id"] for row in listed["results"]] == [str(item.pk)]

    export_id = run_export(compliance, django_capture_on_commit_callbacks, settings, evidence_types=[patch_type])
    folder = unpack(download(compliance, export_id), tmp_path / "bundle")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [entry["evidence_type"] for entry in manifest["items"]] == [patch_type]


def test_the_schema_lists_the_registered_types(compliance, patch_type):
    schema = json.loads(compliance.client.get("/api/schema/", {"format": "json"}).content)
    [param] = [p for p in schema["paths"]["/api/v1/evidence/"]["get"]["parameters"] if p["name"] == "evidence_type"]
    # step_result: the test-only job kind's, installed by tests/settings.py
    assert set(param["schema"]["enum"]) == {
        "agent_update_result",
        "deployment_result",
        "configuration_audit",
        "containment_state",
        "remote_session",
        "session_recording",
        "drift_report",
        "enforcement_result",
        "history_anchor",
        "patch_result",
        "patch_scan_result",
        "scan_verification",
        "vendor_attestation",
        "script_result",
        "step_result",
    }
    export_filters = schema["components"]["schemas"]["ExportFiltersRequest"]["properties"]["evidence_types"]["items"]
    assert set(schema["components"]["schemas"][export_filters["$ref"].rsplit("/", 1)[-1]]["enum"]) == {
        "agent_update_result",
        "deployment_result",
        "configuration_audit",
        "containment_state",
        "remote_session",
        "session_recording",
        "drift_report",
        "enforcement_result",
        "patch_result",
        "patch_scan_result",
        "scan_verification",
        "vendor_attestation",
        "script_result",
        "step_result",
    }


def test_history_anchors_and_unknown_types_are_not_export_items(compliance):
    for asked in (["history_anchor"], ["no_such_type"]):
        response = post_json(compliance.client, "/api/v1/evidence/exports/", {"evidence_types": asked})
        assert response.status_code == 400 and "evidence_types" in response.json()


def test_a_type_is_registered_once_and_named_plainly():
    with pytest.raises(ValueError, match="registered twice"):
        types.register("script_result", "something else")
    with pytest.raises(ValueError, match="lower-case"):
        types.register("Patch Result", "spaces and capitals")
    assert evidence.record  # the service the types serve
