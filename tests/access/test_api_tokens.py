"""API tokens: who may be given one, for which sites, for how long; and what a token leaves behind."""

from __future__ import annotations

import io
import re
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from rmm.access import roles as access
from rmm.access import services as access_services
from rmm.access.models import ApiToken
from rmm.core.errors import Forbidden
from rmm.history.models import HistoryEvent
from rmm.inventory import services as inventory
from tests.helpers import approved_authority, make_agent, otp_login


def _token(*args, **kwargs) -> str:
    out = io.StringIO()
    call_command("rmm_token", *args, stdout=out, **kwargs)
    return out.getvalue().strip()


# --- rmm_token asks for the sites it grants ---------------------------------------------------


def test_rmm_token_without_a_site_or_all_sites_refuses_and_grants_nothing(db):
    inventory.get_or_create_site("alpha")
    with pytest.raises(CommandError, match="--site NAME or --all-sites"):
        _token("carol", role="technician")
    assert not get_user_model().objects.filter(username="carol").exists()
    assert not HistoryEvent.objects.filter(action__in=["access.site_granted", "api_token.issued"]).exists()


def test_rmm_token_from_the_shell_exits_non_zero_without_a_site(db, capsys):
    with pytest.raises(SystemExit) as exit_:
        call_command_from_argv(["manage.py", "rmm_token", "carol", "--role", "psa"])
    assert exit_.value.code != 0
    assert "--site NAME or --all-sites" in capsys.readouterr().err


def call_command_from_argv(argv):
    from django.core.management import ManagementUtility

    ManagementUtility(argv).execute()


def test_rmm_token_with_a_site_grants_that_site_only(db):
    alpha = inventory.get_or_create_site("alpha")
    inventory.get_or_create_site("beta")
    assert _token("carol", role="technician", site=["alpha"]).startswith("rmm_")
    user = get_user_model().objects.get(username="carol")
    assert list(access.visible_sites(user)) == [alpha]
    assert not access.sees_all_sites(user)


def test_rmm_token_with_all_sites_grants_every_site(db):
    inventory.get_or_create_site("alpha")
    assert _token("carol", role="technician", all_sites=True).startswith("rmm_")
    assert access.sees_all_sites(get_user_model().objects.get(username="carol"))


def test_rmm_token_refuses_a_site_and_all_sites_together(db):
    inventory.get_or_create_site("alpha")
    with pytest.raises(CommandError, match="not both"):
        _token("carol", role="technician", site=["alpha"], all_sites=True)
    assert not get_user_model().objects.filter(username="carol").exists()


# --- expiry, revocation, last use ---------------------------------------------------------------


def _client(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def _row(token: str) -> ApiToken:
    return ApiToken.objects.get(prefix=token.split("_")[1])


def test_an_expired_token_answers_401_saying_so(caller):
    tech = caller("tech", "technician")
    ApiToken.objects.filter(user=tech.user).update(expires_at=timezone.now() - timedelta(minutes=1))
    r = tech.get("/api/v1/sites/")
    assert r.status_code == 401
    assert r.json()["detail"].startswith("This token expired at ")


def test_an_unknown_token_answers_401_saying_so(db):
    r = _client("rmm_000000000000_nope").get("/api/v1/sites/")
    assert (r.status_code, r.json()) == (401, {"detail": "Unknown token."})


def test_a_token_revokes_itself_through_the_api_and_then_answers_401(caller):
    tech = caller("tech", "technician")
    row = ApiToken.objects.get(user=tech.user)
    r = tech.post(f"/api/v1/tokens/{row.pk}/revoke/", {"reason": "leaked in a ticket"}, format="json")
    assert r.status_code == 200, r.content
    assert r.json()["revoked_at"] and r.json()["revoked_by"] == "user:tech"
    r = tech.get("/api/v1/sites/")
    assert r.status_code == 401
    assert r.json()["detail"].startswith("This token was revoked at ")
    event = HistoryEvent.objects.get(action="api_token.revoked")
    assert event.payload["reason"] == "leaked in a ticket"
    assert event.payload["api_token"] == str(row.pk)  # revoked through itself


def test_revoking_twice_answers_409(caller):
    tech = caller("tech", "technician")
    spare = access_services.issue_token(tech.user, name="spare")
    path = f"/api/v1/tokens/{_row(spare).pk}/revoke/"
    assert tech.post(path, {}, format="json").status_code == 200
    assert tech.post(path, {}, format="json").status_code == 409


def test_a_caller_cannot_see_or_revoke_another_users_token(caller, site):
    tech = caller("tech", "technician")
    other = caller("other", "technician")
    theirs = ApiToken.objects.get(user=other.user)
    assert [t["user"] for t in tech.get("/api/v1/tokens/").json()["results"]] == ["tech"]
    assert tech.get(f"/api/v1/tokens/{theirs.pk}/").status_code == 404
    assert tech.post(f"/api/v1/tokens/{theirs.pk}/revoke/", {}, format="json").status_code == 404
    assert ApiToken.objects.get(pk=theirs.pk).revoked_at is None
    assert HistoryEvent.objects.filter(action="refused.api_token.revoke", actor="user:tech").exists()


def test_an_admin_over_every_site_lists_and_revokes_any_token(caller):
    root = caller("root", "admin")
    other = caller("other", "psa")
    theirs = ApiToken.objects.get(user=other.user)
    assert {t["user"] for t in root.get("/api/v1/tokens/").json()["results"]} == {"root", "other"}
    assert root.post(f"/api/v1/tokens/{theirs.pk}/revoke/", {}, format="json").status_code == 200
    assert other.get("/api/v1/sites/").status_code == 401


def test_an_admin_of_one_site_sees_only_its_own_tokens(caller, site):
    root = caller("root", "admin", sites=[site])
    caller("other", "psa")
    assert [t["user"] for t in root.get("/api/v1/tokens/").json()["results"]] == ["root"]


def test_the_command_lists_tokens_with_their_last_use_and_revokes_one(caller):
    tech = caller("tech", "technician")
    assert tech.get("/api/v1/sites/").status_code == 200
    row = ApiToken.objects.get(user=tech.user)
    out = io.StringIO()
    call_command("rmm_tokens", "list", "tech", stdout=out)
    listed = out.getvalue().splitlines()[1]
    assert row.prefix in listed and row.last_used_at.isoformat(timespec="minutes") in listed
    call_command("rmm_tokens", "revoke", row.prefix, "--reason", "offboarding", stdout=io.StringIO())
    assert tech.get("/api/v1/sites/").status_code == 401
    event = HistoryEvent.objects.get(action="api_token.revoked")
    assert (event.actor, event.payload["reason"]) == ("cli:rmm_tokens", "offboarding")
    with pytest.raises(CommandError, match="revoked already"):
        call_command("rmm_tokens", "revoke", str(row.pk), stdout=io.StringIO())


def test_the_admin_lists_tokens_and_revokes_them(caller):
    root = caller("root", "admin")
    other = caller("other", "psa")
    theirs = ApiToken.objects.get(user=other.user)
    browser = Client()
    otp_login(browser, root.user)
    page = browser.get("/admin/access/apitoken/")
    assert page.status_code == 200
    assert theirs.prefix in page.content.decode()
    r = browser.post("/admin/access/apitoken/", {"action": "revoke", "_selected_action": [str(theirs.pk)]})
    assert r.status_code == 302
    assert ApiToken.objects.get(pk=theirs.pk).revoked_at is not None
    assert other.get("/api/v1/sites/").status_code == 401


def test_last_use_is_written_at_most_once_a_minute(caller):
    tech = caller("tech", "technician")
    row = ApiToken.objects.get(user=tech.user)
    assert row.last_used_at is None
    assert tech.get("/api/v1/sites/").status_code == 200
    first = ApiToken.objects.get(pk=row.pk).last_used_at
    assert first is not None
    with CaptureQueriesContext(connection) as queries:
        assert tech.get("/api/v1/sites/").status_code == 200
    assert not [q for q in queries.captured_queries if "UPDATE" in q["sql"] and "apitoken" in q["sql"]]
    assert ApiToken.objects.get(pk=row.pk).last_used_at == first
    ApiToken.objects.filter(pk=row.pk).update(last_used_at=first - timedelta(seconds=61))
    assert tech.get("/api/v1/sites/").status_code == 200
    assert ApiToken.objects.get(pk=row.pk).last_used_at > first - timedelta(seconds=1)
    assert tech.get(f"/api/v1/tokens/{row.pk}/").json()["last_used_at"]


# --- approver and admin tokens ------------------------------------------------------------------


def test_approver_and_admin_tokens_from_the_command_expire_after_the_setting(db, settings):
    settings.RMM_PRIVILEGED_TOKEN_HOURS = 3
    inventory.get_or_create_site("alpha")
    before = timezone.now()
    for username, role in (("boss", "approver"), ("root", "admin")):
        row = _row(_token(username, role=role, site=["alpha"]))
        assert row.privileged
        assert before + timedelta(hours=3) <= row.expires_at <= timezone.now() + timedelta(hours=3)
    tech = _row(_token("tech", role="technician", site=["alpha"]))
    assert (tech.privileged, tech.expires_at) == (False, None)
    assert _row(_token("tech", role="technician", site=["alpha"], hours=2)).expires_at is not None


def test_an_approver_token_that_never_expires_is_refused(db):
    inventory.get_or_create_site("alpha")
    with pytest.raises(CommandError, match="must expire"):
        _token("boss", role="approver", site=["alpha"], hours=0)


def test_a_token_issued_before_its_user_could_approve_answers_401(caller):
    tech = caller("tech", "technician")
    access_services.ensure_user_with_role("tech", "approver")
    r = tech.get("/api/v1/sites/")
    assert r.status_code == 401
    assert "issued before its user could approve" in r.json()["detail"]


def test_a_technician_issues_its_own_token_on_the_console(caller):
    tech = caller("tech", "technician")
    browser = Client()
    browser.force_login(tech.user)
    r = browser.post("/console/tokens/", {"name": "laptop"})
    assert r.status_code == 200
    token = re.search(r"<code>(rmm_[0-9a-f]{12}_[^<]+)</code>", r.content.decode()).group(1)
    assert _client(token).get("/api/v1/sites/").status_code == 200
    row = _row(token)
    assert (row.name, row.privileged, row.expires_at, row.issued_by) == ("laptop", False, None, "user:tech")
    assert row.prefix in browser.get("/console/tokens/").content.decode()
    r = browser.post(f"/console/tokens/{row.pk}/revoke/")
    assert r.status_code == 302
    assert _client(token).get("/api/v1/sites/").status_code == 401


def test_an_approver_without_a_second_factor_gets_no_token_from_the_console(caller):
    boss = caller("boss", "approver")
    browser = Client()
    browser.force_login(boss.user)  # the password alone
    r = browser.post("/console/tokens/", {"name": "sneaky"})
    assert r.status_code == 302 and "/accounts/otp/" in r["Location"]
    assert not ApiToken.objects.filter(name="sneaky").exists()


def test_the_service_refuses_an_approver_token_without_a_second_factor(caller):
    boss = caller("boss", "approver")
    with pytest.raises(Forbidden, match="second factor"):
        access_services.issue_own_token(boss.user, name="sneaky", second_factor=False)
    assert not ApiToken.objects.filter(name="sneaky").exists()
    event = HistoryEvent.objects.get(action="refused.api_token.issue")
    assert event.actor == "user:boss"


def test_an_approver_past_the_second_factor_gets_a_token_that_expires(caller, settings):
    settings.RMM_PRIVILEGED_TOKEN_HOURS = 12
    boss = caller("boss", "approver")
    browser = Client()
    otp_login(browser, boss.user)
    r = browser.post("/console/tokens/", {"name": "api approvals"})
    assert r.status_code == 200
    token = re.search(r"<code>(rmm_[0-9a-f]{12}_[^<]+)</code>", r.content.decode()).group(1)
    row = _row(token)
    assert row.privileged
    assert timedelta(hours=11, minutes=59) < row.expires_at - timezone.now() <= timedelta(hours=12)
    assert _client(token).get("/api/v1/sites/").status_code == 200


# --- every decision through a token names the token -----------------------------------------------


def test_every_decision_made_through_a_token_records_the_token(caller, site):
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    root = caller("root", "admin")
    ids = {c.user.username: str(ApiToken.objects.get(user=c.user).pk) for c in (psa, tech, boss, root)}
    agent, _auth = make_agent(site, "web-01")
    task = approved_authority(site, psa.user)
    start = HistoryEvent.objects.order_by("-sequence").values_list("sequence", flat=True).first()

    script = tech.post(
        "/api/v1/scripts/", {"name": "s", "language": "sh", "content": "true\n", "requires_approval": True}
    ).json()
    assert boss.post(f"/api/v1/scripts/{script['id']}/approve/").status_code == 200
    body = {"script": script["id"], "asset": str(agent.asset_id), "psa_task_id": str(task.pk)}
    first = psa.post("/api/v1/script-jobs/", body, format="json").json()
    second = psa.post("/api/v1/script-jobs/", body, format="json").json()
    assert boss.post(f"/api/v1/script-jobs/{first['id']}/approve/").status_code == 200
    assert boss.post(f"/api/v1/script-jobs/{second['id']}/reject/", {"reason": "no"}, format="json").status_code == 200
    switch = tech.post("/api/v1/kill-switches/", {"scope": "site", "target": "alpha", "reason": "stop"}).json()
    r = boss.post(f"/api/v1/kill-switches/{switch['id']}/release/", {"reason": "safe"}, format="json")
    assert r.status_code == 200
    hold = root.post("/api/v1/evidence/legal-holds/", {"site": "alpha", "reason": "audit"}, format="json").json()
    r = root.post(f"/api/v1/evidence/legal-holds/{hold['id']}/release/", {"reason": "done"}, format="json")
    assert r.status_code == 200, r.content
    assert root.post(f"/api/v1/agents/{agent.pk}/revoke/", {"reason": "stolen"}, format="json").status_code == 200

    events = HistoryEvent.objects.filter(sequence__gt=start, actor__startswith="user:")
    decisions = {
        "script.approved": "boss",
        "job.created": "psa",
        "job.queued": "boss",  # approved: the job is queued
        "job.rejected": "boss",
        "kill_switch.engaged": "tech",
        "kill_switch.released": "boss",
        "legal_hold.placed": "root",
        "legal_hold.released": "root",
        "agent.revoked": "root",
    }
    seen = {}
    for event in events:
        assert event.payload.get("api_token") == ids[event.actor.removeprefix("user:")], (event.action, event.payload)
        seen[event.action] = event.actor.removeprefix("user:")
    assert {action: seen.get(action) for action in decisions} == decisions


def test_a_decision_in_a_session_names_no_token(caller, site):
    tech = caller("tech", "technician")
    browser = Client()
    browser.force_login(tech.user)
    r = browser.post("/console/kill-switches/", {"scope": "site", "site": "alpha", "reason": "stop", "confirm": "yes"})
    assert r.status_code == 302
    assert "api_token" not in HistoryEvent.objects.get(action="kill_switch.engaged").payload
