"""Defect 8 of issue 11: password reset gone, downloads re-check the export role, index.csv
neutralises spreadsheet formulas, the approval queue records its refusals, the script admin shows
``privileged``."""

import csv
import io

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from evidence.models import EvidenceExport
from rmm.access import services as access_services
from rmm.history.models import HistoryEvent
from scripting import services as scripting
from scripting.models import Script, ScriptJob
from tests.helpers import approved_authority, approved_script, make_agent, otp_login
from tests.support.evidence import download, record_item, run_export, unpack


@pytest.mark.parametrize(
    "path",
    [
        "/accounts/password_reset/",
        "/accounts/password_reset/done/",
        "/accounts/reset/MQ/set-password/",
        "/accounts/reset/done/",
    ],
)
def test_password_reset_is_gone(db, path):
    assert Client().get(path).status_code == 404
    assert Client().post(path, {"email": "someone@example.com"}).status_code == 404


def test_sign_in_and_out_stay(db):
    assert Client().get("/accounts/login/").status_code == 200
    assert Client().post("/accounts/logout/").status_code == 302


# --- exports -----------------------------------------------------------------------------------


@pytest.fixture
def compliance(caller, site):
    return caller("comp-alpha", "compliance", sites=[site])


def test_a_download_rechecks_the_export_role(caller, site, compliance, django_capture_on_commit_callbacks, settings):
    psa = caller("psa", "psa")
    asset = make_agent(site, "alpha-1")[0].asset
    record_item(asset, approved_authority(site, psa.user))
    export_id = run_export(compliance, django_capture_on_commit_callbacks, settings)
    download(compliance, export_id)
    compliance.user.groups.remove(Group.objects.get(name="compliance"))
    compliance.user.groups.add(Group.objects.get(name="technician"))
    response = compliance.get(f"/api/v1/evidence/exports/{export_id}/download/")
    assert response.status_code == 403
    assert response.json() == {"detail": "Your role may not export evidence."}
    refused = HistoryEvent.objects.get(action="refused.evidence_export.download", subject_id=export_id)
    assert refused.payload["reason"] == "role may not export evidence"
    assert EvidenceExport.objects.filter(pk=export_id).exists()


HOSTILE = ['=HYPERLINK("http://evil","x")', "+1+1", "-2+3", "@SUM(A1)", "=cmd|' /C calc'!A0"]


def test_index_csv_neutralises_spreadsheet_formulas(
    caller, site, compliance, django_capture_on_commit_callbacks, settings, tmp_path
):
    psa = caller("psa", "psa")
    task = approved_authority(site, psa.user)
    for n, hostname in enumerate(HOSTILE):
        asset = make_agent(site, hostname)[0].asset
        record_item(asset, task, n=n)
    export_id = run_export(compliance, django_capture_on_commit_callbacks, settings)
    folder = unpack(download(compliance, export_id), tmp_path / "u")
    rows = list(csv.DictReader(io.StringIO((folder / "index.csv").read_text(), newline="")))
    assert sorted(r["asset_hostname"] for r in rows) == sorted("'" + h for h in HOSTILE)
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), row
    # the manifest keeps the hostnames as the agents reported them
    assert "=HYPERLINK" in (folder / "manifest.json").read_text()


@pytest.mark.parametrize("text", ["=1+1", "+1", "-1", "@A1", "\tx", "\rx"])
def test_every_formula_start_is_neutralised(text):
    """Tab and CR cannot come from an enrolled hostname (it is stripped); a PSA title or a reason can."""
    from evidence import report

    assert report.csv_cell(text) == "'" + text
    assert report.csv_cell("plain " + text) == "plain " + text
    assert report.csv_cell(7) == 7


# --- the approval queue ------------------------------------------------------------------------


@pytest.fixture
def pending(caller, site):
    tech, boss, psa = caller("tech", "technician"), caller("boss", "approver"), caller("psa", "psa")
    careful = approved_script(tech.user, boss.user, name="careful", requires_approval=True)
    agent, _ = make_agent(site)
    task = approved_authority(site, psa.user)
    job = scripting.create_script_job(tech.user, script_id=careful.pk, asset_id=agent.asset_id, psa_task_id=task.pk)
    draft = scripting.create_script(tech.user, name="draft", language="sh", content="true\n")
    # A staff user without `approve` (only a superuser can make one).
    viewer = access_services.ensure_user_with_role("viewer", "compliance")
    access_services.grant_site(viewer, site)
    viewer.is_staff = True
    viewer.save()
    return {"job": job, "draft": draft, "client": otp_login(Client(), viewer)}


@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_the_queue_answers_403_and_records_a_decision_without_approve(pending, decision):
    client = pending["client"]
    assert client.get("/admin/approvals/").status_code == 200  # looking is allowed
    for kind, obj in (("script_version", pending["draft"]), ("script", pending["job"])):
        before = HistoryEvent.objects.filter(action__startswith="refused.", actor="user:viewer").count()
        response = client.post(
            "/admin/approvals/", {"kind": kind, "id": str(obj.pk), "decision": decision, "reason": "no"}
        )
        assert response.status_code == 403, kind
        refused = HistoryEvent.objects.filter(action__startswith="refused.", actor="user:viewer").order_by("-sequence")
        assert refused.count() == before + 1, kind
        assert refused.first().subject_id == str(obj.pk)
    assert Script.objects.get(pk=pending["draft"].pk).approval_status == "pending"
    assert ScriptJob.objects.get(pk=pending["job"].pk).status == "awaiting_approval"


def test_the_queue_refuses_and_records_a_staff_user_without_a_role(db, site):
    from django.contrib.auth import get_user_model

    nobody = get_user_model().objects.create_user("nobody", password="x-long-password-1", is_staff=True)
    response = otp_login(Client(), nobody).get("/admin/approvals/")
    assert response.status_code == 403
    assert HistoryEvent.objects.filter(action="refused.approval_queue.open", actor="user:nobody").exists()


# --- the script admin --------------------------------------------------------------------------


def test_the_script_admin_shows_privileged_in_the_list_and_on_the_page(caller, site):
    tech = caller("tech", "technician")
    boss = access_services.ensure_user_with_role("boss-staff", "approver")
    access_services.grant_site(boss, site)
    root = scripting.create_script(tech.user, name="as-root", language="sh", content="id\n", privileged=True)
    client = otp_login(Client(), boss)
    listing = client.get("/admin/scripting/script/").content.decode()
    assert "column-privileged" in listing
    page = client.get(f"/admin/scripting/script/{root.pk}/change/").content.decode()
    assert "field-privileged" in page
