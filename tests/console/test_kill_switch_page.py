"""The kill switch page: the site and the asset are picked from the user's own (the asset with the
console's asset picker), nothing is chosen for the user (400 with the field's error in plain words),
a confirmation comes before anything is engaged, and the history says who engaged and released
which switch, when and why."""

import re

import pytest
from django.test import Client

from rmm.engine.models import KillSwitch
from rmm.engine.services import kill_switches
from rmm.history.models import HistoryEvent
from tests.helpers import make_agent, otp_login


@pytest.fixture
def tech(caller, site):
    return caller("tech", "technician", sites=[site])


@pytest.fixture
def browser(tech):
    client = Client()
    client.force_login(tech.user)
    return client


def test_the_pickers_offer_the_users_own_sites_and_assets_by_name(browser, site, other_site):
    make_agent(site, hostname="web-01")
    make_agent(other_site, hostname="db-09")
    html = browser.get("/console/kill-switches/").content.decode()
    sites = re.search(r'<select name="site".*?</select>', html, re.S).group(0)
    assets = re.search(r'<div class="picker" data-component="asset-picker".*?</fieldset>', html, re.S).group(0)
    assert '<option value="alpha">alpha</option>' in sites and "beta" not in sites
    assert '<strong data-field="hostname">web-01</strong> · <span data-field="site">alpha</span>' in assets
    assert "db-09" not in assets
    # no scope is chosen for the user
    assert "checked" not in re.search(r"<fieldset.*?</fieldset>", html, re.S).group(0)
    assert '<input type="text" name="target"' not in html


@pytest.mark.parametrize(
    "body, field, message",
    [
        ({"reason": "stop"}, "scope", "Choose what to stop: a site, an asset or everything."),
        ({"scope": "site", "reason": "stop"}, "site", "Choose the site to stop."),
        ({"scope": "asset", "reason": "stop"}, "asset", "Choose the asset to stop."),
        ({"scope": "site", "site": "beta", "reason": "stop"}, "site", "Choose one of your sites from the list."),
        ({"scope": "site", "site": "alpha"}, "reason", "Say why the kill switch is engaged."),
    ],
)
def test_bad_input_answers_400_with_the_fields_error_beside_it(browser, other_site, body, field, message):
    response = browser.post("/console/kill-switches/", {**body, "confirm": "yes"})
    assert response.status_code == 400
    html = response.content.decode()
    assert f'<ul class="errorlist" id="id_{field}_error"><li>{message}</li></ul>' in html
    assert "`" not in html and "{'" not in html
    assert not KillSwitch.objects.exists()


def test_engaging_needs_a_confirmation_then_shows_in_the_history(browser, site, caller):
    agent, _ = make_agent(site, hostname="web-01")
    body = {"scope": "asset", "asset": str(agent.asset_id), "reason": "ransomware suspected"}
    response = browser.post("/console/kill-switches/", body)
    assert response.status_code == 200
    html = response.content.decode()
    assert "Engage the kill switch on asset web-01 (alpha)?" in html
    assert 'name="confirm" value="yes"' in html
    assert not KillSwitch.objects.exists()

    response = browser.post("/console/kill-switches/", {**body, "confirm": "yes"})
    assert response.status_code == 302
    switch = KillSwitch.objects.get()
    assert switch.asset_id == agent.asset_id

    boss = caller("boss", "approver")
    kill_switches.release(boss.user, switch, "false alarm")
    html = browser.get("/console/kill-switches/").content.decode()
    row = re.search(rf'<tr data-kill-switch="{switch.pk}">.*?</tr>', html, re.S).group(0)
    for text in ("asset web-01", "by tech", "ransomware suspected", "by boss", "false alarm"):
        assert text in row, text


def test_a_role_that_may_not_engage_is_answered_403_and_recorded(caller, site):
    auditor = caller("auditor", "compliance", sites=[site])
    client = Client()
    client.force_login(auditor.user)
    response = client.post(
        "/console/kill-switches/", {"scope": "site", "site": "alpha", "reason": "x", "confirm": "yes"}
    )
    assert response.status_code == 403
    assert HistoryEvent.objects.filter(action="refused.kill_switch.engage", actor="user:auditor").exists()
    assert not KillSwitch.objects.exists()


def test_the_admin_says_kill_switches(caller, site):
    from rmm.access import services as access_services

    admin = access_services.ensure_user_with_role("chief", "admin")
    access_services.grant_site(admin, None)
    admin.is_staff = True
    admin.save()
    html = otp_login(Client(), admin).get("/admin/").content.decode()
    assert "Kill switches" in html and "Kill switchs" not in html


def test_the_page_costs_the_same_queries_for_one_switch_or_many(browser, site, caller, tech):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    boss = caller("boss", "approver")

    def cost() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert browser.get("/console/kill-switches/").status_code == 200
        return len(captured)

    for n in range(6):
        agent, _ = make_agent(site, hostname=f"web-{n}")
        switch = kill_switches.engage(tech.user, scope="asset", target=str(agent.asset_id), reason=f"r{n}")
        if n == 0:
            few = cost()
        kill_switches.release(boss.user, switch, "ok")
    kill_switches.engage(tech.user, scope="site", target="alpha", reason="still on")
    assert cost() == few


@pytest.fixture
def chief(site):
    """An admin of the site alpha alone, signed in to the Django admin with a second factor."""
    from rmm.access import services as access_services

    admin = access_services.ensure_user_with_role("chief-alpha", "admin")
    access_services.grant_site(admin, site)
    admin.is_staff = True
    admin.save()
    return admin, otp_login(Client(), admin)


def test_the_admin_finds_the_asset_by_autocomplete_labelled_beyond_its_hostname(chief, site, other_site):
    from rmm.inventory import services as inventory

    admin, client = chief
    web, _ = make_agent(site, hostname="web-01")
    retired, _ = make_agent(site, hostname="web-02")
    inventory.retire_asset(admin, retired.asset, "sold")
    make_agent(other_site, hostname="web-03")

    add = client.get("/admin/engine/killswitch/add/").content.decode()
    asset = re.search(r'<select name="asset".*?</select>', add, re.S).group(0)
    assert "admin-autocomplete" in asset and "web-01" not in asset  # found by typing, not listed
    assert 'name="target"' not in add

    query = {"app_label": "engine", "model_name": "killswitch", "field_name": "asset", "term": "WEB"}
    found = client.get("/admin/autocomplete/", query).json()["results"]
    assert found == [{"id": str(web.asset_id), "text": f"web-01 · alpha · Linux · {str(web.asset_id)[:8]}"}]


def test_the_admin_engages_on_the_picked_asset_and_names_a_missing_one(chief, site):
    admin, client = chief
    web, _ = make_agent(site, hostname="web-01")
    response = client.post("/admin/engine/killswitch/add/", {"scope": "asset", "reason": "stop"})
    assert response.status_code == 200 and not KillSwitch.objects.exists()
    assert "Choose the asset to stop." in response.content.decode()

    body = {"scope": "asset", "asset": str(web.asset_id), "reason": "ransomware suspected"}
    response = client.post("/admin/engine/killswitch/add/", body)
    assert response.status_code == 302
    switch = KillSwitch.objects.get()
    assert (switch.asset_id, switch.engaged_by, switch.reason) == (web.asset_id, admin, "ransomware suspected")
