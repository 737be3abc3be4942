"""The approval queue's cards say what will run where under which authority; one's own items are
marked "yours" and offer no decision (the service still refuses one, and records it); the
navigation's badge counts what waits."""

import re

import pytest
from django.test import Client

from rmm.access import services as access_services
from rmm.history.models import HistoryEvent
from scripting import services as scripting
from scripting.models import ScriptJob
from tests.helpers import approved_authority, approved_script, make_agent, otp_login


@pytest.fixture
def queue(caller, site):
    tech, boss, psa = caller("tech", "technician"), caller("boss", "approver"), caller("psa", "psa")
    admin = access_services.ensure_user_with_role("chief", "admin")
    access_services.grant_site(admin, None)
    admin.is_staff = True
    admin.save()
    careful = approved_script(tech.user, boss.user, name="careful", requires_approval=True)
    agent, _ = make_agent(site, hostname="web-01")
    task = approved_authority(site, psa.user)
    job = scripting.create_script_job(tech.user, script_id=careful.pk, asset_id=agent.asset_id, psa_task_id=task.pk)
    own_job = scripting.create_script_job(admin, script_id=careful.pk, asset_id=agent.asset_id, psa_task_id=task.pk)
    own_draft = scripting.create_script(admin, name="own-draft", language="sh", content="true\n")
    return {"job": job, "own_job": own_job, "own_draft": own_draft, "task": task, "script": careful, "admin": admin}


def _cards(html: str) -> dict[str, str]:
    return {
        m.group(1): m.group(0)
        for m in re.finditer(
            r'<div class="module queue-item" data-kind="[^"]+" data-id="([^"]+)">.*?</div>', html, re.S
        )
    }


def test_a_job_card_says_what_runs_where_under_which_authority(queue):
    client = otp_login(Client(), queue["admin"])
    html = client.get("/admin/approvals/").content.decode()
    card = _cards(html)[str(queue["job"].pk)]
    script, task = queue["script"], queue["task"]
    for text in (
        "careful",
        f'<dd data-field="version">{script.version}</dd>',
        script.sha256,
        "web-01 (site alpha)",
        f"Patch Tuesday ({task.case_id})",
        f"Run fix ({task.pk})",
        "Requested by tech",
    ):
        assert text in card, text
    assert 'value="approve"' in card and 'value="reject"' in card
    assert "Yours" not in card


def test_ones_own_items_are_marked_and_offer_no_decision(queue):
    client = otp_login(Client(), queue["admin"])
    cards = _cards(client.get("/admin/approvals/").content.decode())
    for obj in (queue["own_job"], queue["own_draft"]):
        card = cards[str(obj.pk)]
        assert "<strong>Yours</strong>: another approver must decide it." in card
        assert 'value="approve"' not in card and 'value="reject"' not in card


def test_the_service_still_refuses_self_approval_and_records_it(queue):
    client = otp_login(Client(), queue["admin"])
    response = client.post(
        "/admin/approvals/", {"kind": "script", "id": str(queue["own_job"].pk), "decision": "approve"}
    )
    assert response.status_code == 403
    assert ScriptJob.objects.get(pk=queue["own_job"].pk).status == "awaiting_approval"
    refusal = HistoryEvent.objects.filter(action="refused.job.approve", actor="user:chief").get()
    assert refusal.subject_id == str(queue["own_job"].pk)


def test_the_navigation_badge_counts_what_waits_and_says_so(queue):
    client = otp_login(Client(), queue["admin"])
    html = client.get("/console/").content.decode()
    # two jobs and one script version wait; a screen reader hears "Approvals 3 waiting" (an
    # aria-label on a plain span is not read)
    assert '<span class="badge" data-field="pending-approvals">3</span><span class="sr-only"> waiting</span>' in html
