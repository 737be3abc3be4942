"""The admin approval queue: content, hash and diff of pending versions; filters; decisions
through the same services (four eyes included)."""

import pytest
from django.test import Client

from rmm.access import services as access_services
from rmm.artefacts import services as artefacts
from rmm.history.models import HistoryEvent
from scripting import services as scripting
from scripting.models import Script, ScriptJob
from sessions import services as sessions
from sessions.models import SessionPolicy
from tests.helpers import approved_authority, approved_script, make_agent, otp_login


@pytest.fixture
def queue(caller, site, other_site):
    tech, boss, psa = caller("tech", "technician"), caller("boss", "approver"), caller("psa", "psa")
    v1 = approved_script(tech.user, boss.user, name="cleanup", content="rm -f /tmp/a\n")
    v2 = scripting.create_script(tech.user, name="cleanup", language="sh", content="rm -f /tmp/a\nrm -f /tmp/b\n")
    careful = approved_script(tech.user, boss.user, name="careful", requires_approval=True)
    jobs = []
    for s in (site, other_site):
        agent, _ = make_agent(s)
        task = approved_authority(s, psa.user)
        jobs.append(
            scripting.create_script_job(tech.user, script_id=careful.pk, asset_id=agent.asset_id, psa_task_id=task.pk)
        )
    client = otp_login(Client(), boss.user)  # approvers act in the admin with a second factor
    return {"client": client, "v1": v1, "v2": v2, "jobs": jobs, "tech": tech, "boss": boss}


def open_queue(client, query=""):
    page = client.get(f"/admin/approvals/{query}")
    assert page.status_code == 200
    return page.content.decode()


def test_queue_shows_content_hash_and_diff_of_pending_versions(queue):
    body = open_queue(queue["client"])
    assert queue["v2"].sha256 in body
    assert "+rm -f /tmp/b" in body  # the diff from v1
    assert "cleanup v2" in body
    assert body.count('data-kind="script"') == 2


def test_queue_filters_by_kind_site_and_age(queue, site):
    assert 'data-kind="script_version"' not in open_queue(queue["client"], "?kind=script")
    by_site = open_queue(queue["client"], f"?site={site.name}")
    assert by_site.count('data-kind="script"') == 1
    assert 'data-kind="script"' not in open_queue(queue["client"], "?age=1h")  # all were just created


def test_deciding_from_the_queue_keeps_four_eyes(queue):
    client = queue["client"]
    job = queue["jobs"][0]
    client.post("/admin/approvals/", {"kind": "script", "id": str(job.pk), "decision": "approve"})
    assert ScriptJob.objects.get(pk=job.pk).status == "queued"
    client.post("/admin/approvals/", {"kind": "script_version", "id": str(queue["v2"].pk), "decision": "reject"})
    assert Script.objects.get(pk=queue["v2"].pk).approval_status == "pending"  # no reason: refused
    own = Client()
    own.force_login(queue["tech"].user)
    assert own.get("/admin/approvals/").status_code in (302, 403)  # technicians are not staff
    both = access_services.ensure_user_with_role("both", "technician")
    access_services.ensure_user_with_role("both", "approver")
    access_services.grant_site(both, None)
    mine = scripting.create_script(both, name="mine", language="sh", content="true\n")
    selfish = Client()
    otp_login(selfish, both)
    selfish.post("/admin/approvals/", {"kind": "script_version", "id": str(mine.pk), "decision": "approve"})
    assert Script.objects.get(pk=mine.pk).approval_status == "pending"  # self-approval refused
    assert HistoryEvent.objects.filter(action="refused.script.approve", actor="user:both").exists()


def test_the_queue_shows_a_sites_session_policy_versions_to_its_approvers_and_decides_them(queue, site, other_site):
    """A session policy is an artefact kind of a site: its versions show their rules and the diff
    from the policy in force, to approvers of that site only."""
    admin = access_services.ensure_user_with_role("root", "admin")
    access_services.grant_site(admin, None)
    first = sessions.propose_policy(admin, site=site.name, approval_required=True)
    artefacts.decide(first, queue["boss"].user, approve=True)
    second = sessions.propose_policy(admin, site=site.name, allowed=False)
    body = open_queue(queue["client"], "?kind=session_policy")
    assert body.count('data-kind="session_policy"') == 1 and "Session policy alpha v2" in body
    assert "allowed: false" in body and "-allowed: true" in body and "+allowed: false" in body  # the diff from v1
    outsider = access_services.ensure_user_with_role("beta-boss", "approver")
    access_services.grant_site(outsider, other_site)
    elsewhere = otp_login(Client(), outsider)
    assert 'data-kind="session_policy"' not in open_queue(elsewhere)
    elsewhere.post("/admin/approvals/", {"kind": "session_policy", "id": str(second.pk), "decision": "approve"})
    assert SessionPolicy.objects.get(pk=second.pk).approval_status == "pending"  # not theirs to see
    queue["client"].post("/admin/approvals/", {"kind": "session_policy", "id": str(second.pk), "decision": "approve"})
    assert SessionPolicy.objects.get(pk=second.pk).approval_status == "approved"
    assert HistoryEvent.objects.get(action="session_policy.approved", subject_id=str(second.pk)).site_id == site.pk
