"""The console's PSA cases (read-only) and the local authority page: a person holding the psa role
records an approved case and task through the PSA's own upserts (actor and history events as the
PSA's); a job that person then requests on it waits for a second person (the site's policy); every
other role is refused (recorded) with 403."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from rmm.access import services as access_services
from rmm.authority.models import PsaCase, PsaTask
from rmm.history.models import HistoryEvent
from rmm.inventory import services as inventory
from scripting.models import ScriptJob
from tests.helpers import approved_authority, approved_script, make_agent, otp_login

pytestmark = pytest.mark.django_db

FORM = {"site": "alpha", "case_title": "Printer fleet", "task_title": "Clear the spool"}


def signed_in(name: str, role: str, sites) -> tuple[Client, object]:
    user = access_services.ensure_user_with_role(name, role)
    for site in sites:
        access_services.grant_site(user, site)
    client = Client()
    if role in ("admin", "approver"):
        otp_login(client, user)
    else:
        client.force_login(user)
    return client, user


@pytest.fixture
def alpha():
    return inventory.get_or_create_site("alpha")


def test_the_local_page_is_marked_and_records_a_case_and_task_with_actor_and_history(alpha):
    client, psa = signed_in("local-psa", "psa", [alpha])
    page = client.get("/console/authority/local/").content.decode()
    assert "Local authority (no PSA)" in page
    response = client.post("/console/authority/local/", FORM)
    case = PsaCase.objects.get(title="Printer fleet")
    task = PsaTask.objects.get(case=case)
    assert response.status_code == 302 and response["Location"] == f"/console/authority/cases/{case.pk}/"
    assert (case.status, case.site, case.written_by) == ("approved", alpha, psa)
    assert (task.title, task.status, task.written_by) == ("Clear the spool", "approved", psa)
    events = {e.action: e for e in HistoryEvent.objects.filter(action__in=["psa_case.created", "psa_task.created"])}
    assert events["psa_case.created"].actor == events["psa_task.created"].actor == "user:local-psa"
    assert events["psa_case.created"].subject_id == str(case.pk)
    assert events["psa_task.created"].subject_id == str(task.pk)

    shown = client.get(response["Location"]).content.decode()
    assert "Read-only" in shown and "Clear the spool" in shown and f'data-task-id="{task.pk}"' in shown


def test_bad_input_answers_400_and_records_nothing(alpha):
    client, _ = signed_in("local-psa", "psa", [alpha])
    response = client.post("/console/authority/local/", {**FORM, "task_title": ""})
    assert response.status_code == 400 and "This field is required." in response.content.decode()
    response = client.post("/console/authority/local/", {**FORM, "site": "beta"})
    assert response.status_code == 400
    assert not PsaCase.objects.exists()


@pytest.mark.parametrize("role", ["admin", "technician", "approver", "compliance", "edr", "scanner"])
def test_other_roles_are_refused_and_the_refusal_is_recorded(alpha, role):
    client, _ = signed_in(f"someone-{role}", role, [alpha])
    assert client.get("/console/authority/local/").status_code == 403
    assert client.post("/console/authority/local/", FORM).status_code == 403
    assert not PsaCase.objects.exists()
    assert HistoryEvent.objects.filter(action="refused.psa_case.record_local").count() == 2


def test_a_job_on_authority_its_requester_recorded_locally_waits_for_a_second_person(alpha):
    client, psa = signed_in("local-psa", "psa", [alpha])
    tech_client, tech = signed_in("tech", "technician", [alpha])
    boss = access_services.ensure_user_with_role("boss", "approver")
    script = approved_script(tech, boss, name="quick")
    agent, _ = make_agent(alpha, "alpha-1")
    assert not alpha.allow_self_authorized_jobs  # the default policy
    client.post("/console/authority/local/", FORM)
    task = PsaTask.objects.get()

    body = {"script": script.pk, "asset": agent.asset_id, "psa_task": task.pk}
    assert client.post("/console/scripts/run/", body).status_code == 302
    own = ScriptJob.objects.get(requested_by=psa)
    assert own.status == "awaiting_approval" and "wrote its own authority" in own.status_reason
    assert tech_client.post("/console/scripts/run/", body).status_code == 302
    assert ScriptJob.objects.get(requested_by=tech).status == "queued"


def test_cases_of_the_callers_sites_only_and_constant_queries(alpha):
    beta = inventory.get_or_create_site("beta")
    writer = access_services.ensure_user_with_role("w-psa", "psa")
    access_services.grant_site(writer, None)
    mine = approved_authority(alpha, writer)
    theirs = approved_authority(beta, writer)
    client, _ = signed_in("tech", "technician", [alpha])
    page = client.get("/console/authority/cases/").content.decode()
    assert f'data-case-id="{mine.case_id}"' in page and str(theirs.case_id) not in page
    assert client.get(f"/console/authority/cases/{theirs.case_id}/").status_code == 404
    assert "Local authority (no PSA)" not in page  # offered to the psa role only

    def count() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get("/console/authority/cases/").status_code == 200
        return len(captured)

    few = count()
    for _ in range(8):
        approved_authority(alpha, writer)
    assert count() == few
