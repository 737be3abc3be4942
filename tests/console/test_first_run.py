"""A first run in the browser alone: the People page (an admin adds a technician and an approver
with passwords), the "Enroll an agent" page (a token and the exact commands), and the dashboard's
first-run guide, whose steps tick from the database and which goes once a job has finished."""

from __future__ import annotations

import re
import shlex

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from rmm.access import roles
from rmm.access import services as access_services
from rmm.artefacts import services as artefacts
from rmm.history.models import HistoryEvent
from rmm.inventory import services as inventory
from rmm.inventory.models import Agent
from scripting import services as scripting
from scripting.models import ScriptJob
from sessions import services as sessions
from tests.helpers import approved_authority, make_agent, otp_login

pytestmark = pytest.mark.django_db

PASSWORD = "a long enough passphrase 7"


@pytest.fixture
def admin():
    """The demo admin as ``make run`` makes it: a superuser, who also holds the psa role."""
    user = access_services.ensure_user_with_role("admin", "admin")
    access_services.ensure_user_with_role("admin", "psa")
    user.is_superuser = True
    user.save()
    return otp_login(Client(), user)


def add_person(client, username: str, role: str, site: str = "*", password: str = PASSWORD):
    return client.post("/console/people/", {"username": username, "password": password, "role": role, "site": site})


def sign_in(username: str) -> Client:
    """Through the login form, with the password the admin gave."""
    client = Client()
    response = client.post("/accounts/login/", {"username": username, "password": PASSWORD})
    assert response.status_code == 302, response.content.decode()[:500]
    return client


def test_an_admin_adds_a_technician_and_an_approver_who_sign_in_with_their_passwords(admin):
    inventory.get_or_create_site("local")
    assert add_person(admin, "tess", "technician").status_code == 302
    assert add_person(admin, "arno", "approver", site="local").status_code == 302

    body = admin.get("/console/people/").content.decode()
    assert re.search(
        r'data-username="tess">.*?data-field="roles">technician<.*?data-field="sites">every site<', body, re.S
    )
    assert re.search(r'data-username="arno">.*?data-field="roles">approver<.*?data-field="sites">local<', body, re.S)

    tech = sign_in("tess")
    assert tech.get("/console/").status_code == 200
    # An approver sets up its second factor at its first sign-in, as every approver does.
    response = sign_in("arno").get("/console/")
    assert response.status_code == 302 and "/accounts/otp/setup/" in response["Location"]
    assert get_user_model().objects.get(username="arno").is_staff


def test_the_people_page_refuses_bad_input_beside_its_field_and_a_taken_name(admin):
    response = add_person(admin, "tess", "technician", password="short")
    assert response.status_code == 400
    assert re.search(r"This password is too short", response.content.decode())
    response = add_person(admin, "", "wizard")
    assert response.status_code == 400
    body = response.content.decode()
    assert 'id="id_username_error"' in body or "This field is required" in body
    assert "Select a valid choice" in body
    assert add_person(admin, "tess", "technician").status_code == 302
    response = add_person(admin, "TESS", "approver")
    assert response.status_code == 409
    assert "Someone is already called TESS." in response.content.decode()
    assert get_user_model().objects.filter(username__iexact="tess").count() == 1


def test_only_an_admin_may_manage_people_and_an_admin_of_one_site_grants_only_it():
    alpha = inventory.get_or_create_site("alpha")
    inventory.get_or_create_site("beta")
    tech = access_services.ensure_user_with_role("t1", "technician")
    access_services.grant_site(tech, None)
    client = Client()
    client.force_login(tech)
    assert client.get("/console/people/").status_code == 403
    assert add_person(client, "sneaky", "admin").status_code == 403
    assert not get_user_model().objects.filter(username="sneaky").exists()
    assert HistoryEvent.objects.filter(action="refused.user.list").count() == 2

    local_admin = access_services.ensure_user_with_role("alpha-admin", "admin")
    access_services.grant_site(local_admin, alpha)
    client = otp_login(Client(), local_admin)
    assert "Every site" not in client.get("/console/people/").content.decode()
    assert add_person(client, "wide", "technician", site="*").status_code == 400
    assert add_person(client, "far", "technician", site="beta").status_code == 400
    assert add_person(client, "near", "technician", site="alpha").status_code == 302
    near = get_user_model().objects.get(username="near")
    assert [site.name for site in roles.visible_sites(near)] == ["alpha"]


def test_the_enroll_page_issues_a_token_whose_command_enrolls_an_agent(admin):
    inventory.get_or_create_site("local")
    response = admin.post("/console/agents/enroll/", {"site": "local", "uses": 1})
    assert response.status_code == 200
    body = response.content.decode()
    command = re.search(r'<pre id="checkout-enroll">(.*?)</pre>', body).group(1).replace("&#x27;", "'")
    args = shlex.split(command)
    assert args[:8] == [
        ".venv/bin/python",
        "-m",
        "rmm_agent",
        "enroll",
        "--server",
        "http://testserver",
        "--token",
        args[7],
    ]
    assert args[8:] == ["--state-dir", "var/agent-2"]
    assert f"--token {args[7]} --state-dir /var/lib/rmm-agent" in body  # the Debian package's command
    agent, _secret = inventory.enroll_agent(args[7], {"hostname": "second", "os": "Linux", "architecture": "x86_64"})
    assert agent.asset.site.name == "local"
    with pytest.raises(Exception, match="enrollment token"):  # one use, as asked
        inventory.enroll_agent(args[7], {"hostname": "third", "os": "Linux", "architecture": "x86_64"})


def test_the_enroll_page_is_for_admins_of_the_site():
    alpha = inventory.get_or_create_site("alpha")
    inventory.get_or_create_site("beta")
    admin = access_services.ensure_user_with_role("alpha-admin", "admin")
    access_services.grant_site(admin, alpha)
    client = otp_login(Client(), admin)
    response = client.post("/console/agents/enroll/", {"site": "beta", "uses": 1})
    assert response.status_code == 400
    assert "Choose one of your sites from the list." in response.content.decode()
    assert client.post("/console/agents/enroll/", {"site": "alpha", "uses": 0}).status_code == 400
    tech = access_services.ensure_user_with_role("t1", "technician")
    access_services.grant_site(tech, alpha)
    client = Client()
    client.force_login(tech)
    assert client.post("/console/agents/enroll/", {"site": "alpha", "uses": 1}).status_code == 403
    assert HistoryEvent.objects.filter(action="refused.enrollment_token.create").exists()


def steps(client) -> dict[str, str]:
    body = client.get("/console/").content.decode()
    return dict(re.findall(r'<li data-step="(\w+)" data-done="(yes|no)">', body))


def test_the_first_run_guide_ticks_each_step_from_the_database_and_goes_once_a_job_finished(admin):
    site = inventory.get_or_create_site("local")
    assert steps(admin) == dict.fromkeys(("people", "authority", "script", "approval", "agent", "job"), "no")

    add_person(admin, "tess", "technician")
    assert steps(admin)["people"] == "no"  # four eyes needs both
    add_person(admin, "arno", "approver")
    admin_user = get_user_model().objects.get(username="admin")
    task = approved_authority(site, admin_user, self_authorized_jobs=False)
    tess, arno = (get_user_model().objects.get(username=name) for name in ("tess", "arno"))
    # a session policy, approved, is an artefact but no script: neither step ticks
    artefacts.decide(sessions.propose_policy(admin_user, site="local", allowed=False), arno, approve=True)
    assert (steps(admin)["script"], steps(admin)["approval"]) == ("no", "no")
    script = scripting.create_script(tess, name="hello", language="sh", content="echo hi\n")
    assert steps(admin) == {
        **dict.fromkeys(("people", "authority", "script"), "yes"),
        "approval": "no",
        "agent": "no",
        "job": "no",
    }
    scripting.approve_script(script, arno)
    agent, _auth = make_agent(site, "first")
    job = scripting.create_script_job(tess, script_id=script.pk, asset_id=agent.asset_id, psa_task_id=task.pk)
    assert set(steps(admin).values()) == {"yes"}
    assert 'href="/console/agents/enroll/"' in admin.get("/console/").content.decode()

    ScriptJob.objects.filter(pk=job.pk).update(status="succeeded")
    assert steps(admin) == {}
    assert 'id="first-run"' not in admin.get("/console/").content.decode()


def test_a_revoked_agent_does_not_tick_its_step(admin):
    site = inventory.get_or_create_site("local")
    agent, _auth = make_agent(site, "gone")
    assert steps(admin)["agent"] == "yes"
    Agent.objects.filter(pk=agent.pk).update(revoked_at="2026-01-01T00:00:00Z")
    assert steps(admin)["agent"] == "no"
