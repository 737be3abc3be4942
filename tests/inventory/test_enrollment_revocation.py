"""Enrollment tokens can be revoked before their expiry or use limit (issue 11, known limits):
by the service, a command on the server and an admin action scoped to the caller's sites.
A revoked token enrolls nothing more, and every revocation and refusal is in the history."""

import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from rmm.access import services as access_services
from rmm.core.errors import Conflict, Forbidden, NotFound
from rmm.history.models import HistoryEvent
from rmm.inventory import services as inventory
from rmm.inventory.models import Agent, EnrollmentToken
from tests.helpers import make_agent, otp_login, post_json

ENROLL = "/api/v1/agent/enroll/"


def enroll(secret: str, hostname: str = "new-host"):
    return post_json(Client(), ENROLL, {"token": secret, "facts": {"hostname": hostname}})


def test_a_revoked_token_enrolls_nothing_and_the_refusal_is_recorded(caller, site):
    root = caller("root", "admin")
    token, secret = inventory.create_enrollment_token(site, max_uses=5)
    assert enroll(secret, "first-host").status_code == 201

    revoked = inventory.revoke_enrollment_token(token, by=root.user, reason="the token leaked")
    assert revoked.revoked_at is not None and revoked.revoked_by == "user:root"
    event = HistoryEvent.objects.get(action="enrollment_token.revoked")
    assert (event.actor, event.subject_id, event.site_id) == ("user:root", str(token.pk), site.pk)
    assert event.payload == {"use_count": 1, "max_uses": 5, "reason": "the token leaked"}
    assert abs(event.created_at - revoked.revoked_at) < timedelta(seconds=5)

    r = enroll(secret, "second-host")
    assert r.status_code == 403
    assert r.json() == {"detail": "Enrollment refused: enrollment token revoked."}
    refusal = HistoryEvent.objects.get(action="refused.agent.enroll")
    assert (refusal.subject_id, refusal.site_id) == (str(token.pk), site.pk)
    assert refusal.payload == {"hostname": "second-host", "reason": "enrollment token revoked", "address": "127.0.0.1"}
    assert EnrollmentToken.objects.get(pk=token.pk).use_count == 1, "a refused enrollment uses nothing up"
    assert list(Agent.objects.values_list("asset__hostname", flat=True)) == ["first-host"]


def test_an_agent_the_token_enrolled_before_keeps_working(caller, site):
    agent, auth = make_agent(site, "enrolled-before")
    token = EnrollmentToken.objects.get(site=site)
    inventory.revoke_enrollment_token(token, by="cli:test")
    r = post_json(Client(), "/api/v1/agent/heartbeat/", {"running": [], "capacity": 1}, HTTP_AUTHORIZATION=auth)
    assert r.status_code == 200


def test_expired_and_used_up_tokens_say_so(site):
    expired, expired_secret = inventory.create_enrollment_token(site)
    EnrollmentToken.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    _, once = inventory.create_enrollment_token(site, max_uses=1)
    assert enroll(once, "one").status_code == 201
    assert enroll(expired_secret).json() == {"detail": "Enrollment refused: enrollment token expired."}
    assert enroll(once, "two").json() == {"detail": "Enrollment refused: enrollment token used up."}
    assert enroll("enr_nope").json() == {"detail": "Enrollment refused: unknown enrollment token."}


def test_revoking_twice_is_a_conflict(site):
    token, _ = inventory.create_enrollment_token(site)
    inventory.revoke_enrollment_token(token, by="cli:test")
    with pytest.raises(Conflict):
        inventory.revoke_enrollment_token(token, by="cli:test")
    assert HistoryEvent.objects.filter(action="enrollment_token.revoked").count() == 1


def test_only_an_admin_of_the_tokens_site_may_revoke_it(caller, site, other_site):
    token, secret = inventory.create_enrollment_token(site)
    tech = caller("tech", "technician", sites=[site])
    elsewhere = caller("elsewhere", "admin", sites=[other_site])
    with pytest.raises(Forbidden):
        inventory.revoke_enrollment_token(token, by=tech.user)
    with pytest.raises(NotFound):
        inventory.revoke_enrollment_token(token, by=elsewhere.user)
    refusals = HistoryEvent.objects.filter(action="refused.enrollment_token.revoke").order_by("sequence")
    assert [(e.actor, e.payload["reason"]) for e in refusals] == [
        ("user:tech", "role may not manage agents"),
        ("user:elsewhere", "site not granted"),
    ]
    assert EnrollmentToken.objects.get(pk=token.pk).revoked_at is None
    assert enroll(secret).status_code == 201


def test_the_command_lists_and_revokes_tokens(site, other_site):
    mine, _ = inventory.create_enrollment_token(site, actor="cli:rmm_enrollment_token")
    theirs, theirs_secret = inventory.create_enrollment_token(other_site)
    out = io.StringIO()
    call_command("rmm_enrollment_tokens", "list", "--site", site.name, stdout=out)
    assert str(mine.pk) in out.getvalue() and str(theirs.pk) not in out.getvalue()
    assert "0/" in out.getvalue() and "cli:rmm_enrollment_token" in out.getvalue()

    out = io.StringIO()
    call_command("rmm_enrollment_tokens", "revoke", str(mine.pk)[:8], "--reason", "wrong site", stdout=out)
    assert f"Revoked enrollment token {mine.pk}" in out.getvalue()
    event = HistoryEvent.objects.get(action="enrollment_token.revoked")
    assert (event.actor, event.subject_id, event.payload["reason"]) == (
        "cli:rmm_enrollment_tokens",
        str(mine.pk),
        "wrong site",
    )
    out = io.StringIO()
    call_command("rmm_enrollment_tokens", "list", stdout=out)
    assert "by cli:rmm_enrollment_tokens" in out.getvalue()
    out = io.StringIO()
    call_command("rmm_enrollment_tokens", "list", "--usable", stdout=out)
    assert str(mine.pk) not in out.getvalue() and str(theirs.pk) in out.getvalue()

    with pytest.raises(CommandError, match="revoked already"):
        call_command("rmm_enrollment_tokens", "revoke", str(mine.pk), stdout=io.StringIO())
    with pytest.raises(CommandError, match="No enrollment token"):
        call_command("rmm_enrollment_tokens", "revoke", "ffffffff-no", stdout=io.StringIO())
    assert enroll(theirs_secret).status_code == 201


def test_the_admin_action_revokes_only_the_callers_sites_tokens(db, site, other_site):
    mine, mine_secret = inventory.create_enrollment_token(site)
    foreign, foreign_secret = inventory.create_enrollment_token(other_site)
    user = access_services.ensure_user_with_role("one-site-admin", "admin")
    access_services.grant_site(user, site)
    browser = otp_login(Client(), user)

    page = browser.get("/admin/inventory/enrollmenttoken/").content.decode()
    assert str(mine.pk)[:8] in page and str(foreign.pk)[:8] not in page
    assert "Revoke selected enrollment tokens" in page
    r = browser.post(
        "/admin/inventory/enrollmenttoken/",
        {"action": "revoke", "_selected_action": [str(mine.pk), str(foreign.pk)]},
    )
    assert r.status_code == 302
    assert EnrollmentToken.objects.get(pk=mine.pk).revoked_by == "user:one-site-admin"
    assert EnrollmentToken.objects.get(pk=foreign.pk).revoked_at is None, "another site's token"
    assert enroll(mine_secret).status_code == 403
    assert enroll(foreign_secret, "other-host").status_code == 201


def test_the_admin_offers_no_revoke_action_to_a_technician(db, site):
    token, _ = inventory.create_enrollment_token(site)
    user = access_services.ensure_user_with_role("staff-tech", "technician")
    access_services.grant_site(user, site)
    user.is_staff = True
    user.save()
    browser = otp_login(Client(), user)
    page = browser.get("/admin/inventory/enrollmenttoken/")
    assert page.status_code == 200
    assert str(token.pk)[:8] in page.content.decode()
    assert "Revoke selected enrollment tokens" not in page.content.decode()
    r = browser.post("/admin/inventory/enrollmenttoken/", {"action": "revoke", "_selected_action": [str(token.pk)]})
    assert EnrollmentToken.objects.get(pk=token.pk).revoked_at is None
    assert r.status_code in (200, 302)
