"""The console's asset picker: a search on the server by hostname prefix (any case), a whole id or
a site, at most a page of matches each saying hostname, site, OS, online state and a short id; the
user's own sites only, retired assets never; a constant number of queries; and the run form that
uses it, with its errors beside the fields in plain words."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from rmm.access import services as access_services
from rmm.console.asset_picker import PAGE
from rmm.inventory import services as inventory
from rmm.inventory.models import Agent
from scripting.models import ScriptJob
from tests.helpers import make_agent

pytestmark = pytest.mark.django_db


def offered(html: str) -> list[str]:
    """The hostnames offered, in order."""
    return re.findall(r'<strong data-field="hostname">([^<]+)</strong>', html)


def pick(world, **params) -> str:
    response = world["client"].get("/console/assets/pick/", params)
    assert response.status_code == 200
    return response.content.decode()


def test_a_search_by_hostname_prefix_in_any_case_shows_who_each_match_is(world):
    agent = world["agents"][1]
    Agent.objects.filter(pk=agent.pk).update(last_seen_at=timezone.now())  # as its heartbeat does
    html = pick(world, asset_q="ALPHA-1")
    assert offered(html) == ["alpha-1"]
    short = str(agent.asset_id)[:8]
    option = re.search(r'<div class="picker-option">.*?</div>', html, re.S).group(0)
    assert f'<input type="radio" name="asset" value="{agent.asset_id}"' in option
    for shown in ('data-field="site">alpha<', 'data-field="os">Linux<', '<span class="online">online</span>', short):
        assert shown in option
    assert offered(pick(world, asset_q="lpha")) == []  # a prefix, not a substring: the index serves it
    assert offered(pick(world)) == ["alpha-0", "alpha-1", "alpha-2"]
    assert '<span class="muted">never seen</span>' in pick(world, asset_q="alpha-0")


def test_a_whole_id_or_a_site_finds_the_asset(world):
    agent = world["agents"][2]
    assert offered(pick(world, asset_q=str(agent.asset_id))) == ["alpha-2"]
    assert offered(pick(world, asset_site="alpha", asset_q="alpha-0")) == ["alpha-0"]
    assert "None of your assets matches." in pick(world, asset_site="beta")


def test_only_the_users_own_assets_are_offered_and_never_a_retired_one(world):
    other = world["other"]
    assert offered(pick(world, asset_q="beta")) == []
    assert offered(pick(world, asset_q=str(other.asset_id))) == []
    assert str(other.asset_id) not in pick(world, asset=str(other.asset_id))  # not even as the one chosen

    retired = world["agents"][2]
    admin = access_services.ensure_user_with_role("w-admin", "admin")
    access_services.grant_site(admin, None)
    inventory.retire_asset(admin, retired.asset, "sold")
    assert offered(pick(world)) == ["alpha-0", "alpha-1"]
    assert str(retired.asset_id) not in pick(world, asset=str(retired.asset_id))


def test_at_most_a_page_of_matches_and_the_chosen_one_stays_first(world):
    for n in range(PAGE + 2):
        make_agent(world["alpha"], hostname=f"bulk-{n:02d}")
    html = pick(world, asset_q="bulk")
    assert len(offered(html)) == PAGE and "More assets match" in html

    chosen = world["agents"][0]
    html = pick(world, asset_q="bulk-07", asset=str(chosen.asset_id))
    assert offered(html) == ["alpha-0", "bulk-07"]
    assert re.search(rf'value="{chosen.asset_id}" id="asset-{chosen.asset_id}" checked>', html)


def test_a_search_costs_the_same_queries_for_3_or_30_matches(world):
    chosen = str(world["agents"][0].asset_id)

    def cost() -> int:
        with CaptureQueriesContext(connection) as captured:
            pick(world, asset_q="alpha", asset_site="alpha", asset=chosen)
        return len(captured)

    few = cost()
    for n in range(27):
        make_agent(world["alpha"], hostname=f"alpha-x{n:02d}")
    assert cost() == few


def test_a_field_name_that_is_not_one_answers_400(world):
    response = world["client"].get("/console/assets/pick/", {"name": "<script>"})
    assert response.status_code == 400 and b"name:" in response.content


def test_the_run_form_picks_the_asset_and_names_its_errors_in_plain_words(world):
    client, agent = world["client"], world["agents"][0]
    page = client.get(f"/console/scripts/run/?asset={agent.asset_id}").content.decode()
    assert 'data-component="asset-picker"' in page
    assert re.search(rf'value="{agent.asset_id}" id="asset-{agent.asset_id}" checked>', page)
    assert '<select name="asset"' not in page  # no drop-down of every hostname

    response = client.post("/console/scripts/run/", {"asset": str(world["other"].asset_id)})
    assert response.status_code == 400
    html = response.content.decode()
    for field, message in (
        ("script", "Choose the script to run."),
        ("asset", "Choose one of your assets from the matches."),
        ("psa_task", "Choose the PSA task that authorises the job."),
    ):
        assert f'<ul class="errorlist" id="id_{field}_error"><li>{message}</li></ul>' in html
    assert "`" not in html and "{'" not in html
    assert not ScriptJob.objects.exists()

    body = {"script": world["script"].pk, "asset": agent.asset_id, "psa_task": world["task"].pk}
    response = client.post("/console/scripts/run/", body)
    assert response.status_code == 302
    assert ScriptJob.objects.get().asset_id == agent.asset_id
