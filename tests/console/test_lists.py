"""The console's job and asset lists and the asset page: what a technician of one site sees, how
the filters, sort and pages answer, htmx partial answers, and a constant number of queries per page."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from rmm.access import services as access_services
from rmm.inventory import services as inventory
from rmm.inventory.models import Agent, AssetFacts
from scripting import services as scripting
from tests.helpers import approved_authority, approved_script, make_agent
from tests.stepkind.jobs import create_step_job

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    alpha = inventory.get_or_create_site("alpha")
    beta = inventory.get_or_create_site("beta")
    psa = access_services.ensure_user_with_role("w-psa", "psa")
    access_services.grant_site(psa, None)
    author = access_services.ensure_user_with_role("w-author", "technician")
    boss = access_services.ensure_user_with_role("w-boss", "approver")
    tech = access_services.ensure_user_with_role("tech", "technician")
    access_services.grant_site(tech, alpha)
    agents = [make_agent(alpha, f"alpha-{n}")[0] for n in range(3)]
    other, _ = make_agent(beta, "beta-1")
    task = approved_authority(alpha, psa)
    beta_task = approved_authority(beta, psa)
    script = approved_script(author, boss)
    client = Client()
    client.force_login(tech)
    return {
        "alpha": alpha,
        "beta": beta,
        "psa": psa,
        "tech": tech,
        "agents": agents,
        "other": other,
        "task": task,
        "beta_task": beta_task,
        "script": script,
        "client": client,
    }


def script_jobs(w, n: int, agent=None) -> list:
    agent = agent or w["agents"][0]
    return [
        scripting.create_script_job(
            w["psa"], script_id=w["script"].pk, asset_id=agent.asset_id, psa_task_id=w["task"].pk
        )
        for _ in range(n)
    ]


def queries(client, path: str, **headers) -> tuple[int, object]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path, **headers)

    assert response.status_code == 200, response.content[:2000]
    return len(captured), response


# --- jobs ----------------------------------------------------------------------------------------


def test_the_job_list_shows_one_row_per_batch_with_its_progress_and_opens_to_its_jobs(world):
    single = script_jobs(world, 1)[0]
    batch_jobs = scripting.create_script_jobs(
        world["psa"],
        script_id=world["script"].pk,
        psa_task_id=world["task"].pk,
        asset_ids=[a.asset_id for a in world["agents"]],
        plan={"canary": 1},
    )
    batch_id = batch_jobs[0].batch_id
    page = world["client"].get("/console/jobs/").content.decode()
    assert f'data-job-id="{single.pk}"' in page
    assert f'data-batch-id="{batch_id}"' in page
    assert "Batch of 3 script jobs" in page
    assert 'data-component="batch-progress"' in page and '<span data-count="pending">3 pending</span>' in page
    for job in batch_jobs:
        assert f'data-job-id="{job.pk}"' not in page

    opened = world["client"].get(f"/console/jobs/?batch={batch_id}").content.decode()
    assert all(f'data-job-id="{job.pk}"' in opened for job in batch_jobs)
    assert f'data-job-id="{single.pk}"' not in opened
    assert 'id="batch-head"' in opened

    # A filter that looks inside batches lists their jobs too.
    queued = world["client"].get("/console/jobs/?status=queued").content.decode()
    assert f'data-job-id="{batch_jobs[0].pk}"' in queued and f'data-job-id="{single.pk}"' in queued


def test_a_technician_sees_only_the_jobs_of_its_sites(world):
    mine = script_jobs(world, 1)[0]
    theirs = scripting.create_script_job(
        world["psa"], script_id=world["script"].pk, asset_id=world["other"].asset_id, psa_task_id=world["beta_task"].pk
    )
    page = world["client"].get("/console/jobs/").content.decode()
    assert str(mine.pk) in page and str(theirs.pk) not in page
    assert f'data-job-id="{theirs.pk}"' not in world["client"].get(f"/console/jobs/?q={theirs.pk}").content.decode()


def test_the_job_list_filters_searches_sorts_and_pages(world):
    first, second = world["agents"][:2]
    on_first = script_jobs(world, 3, first)
    on_second = script_jobs(world, 2, second)
    step = create_step_job(world["psa"], asset=second.asset, task=world["task"], steps=1)
    client = world["client"]

    def ids(path: str) -> list[str]:
        body = client.get(path).content.decode()
        return [j for j in map(str, [*(x.pk for x in on_first), *(x.pk for x in on_second), step.pk]) if j in body]

    assert set(ids("/console/jobs/?kind=step")) == {str(step.pk)}
    assert set(ids(f"/console/jobs/?asset={first.asset.hostname}")) == {str(j.pk) for j in on_first}
    assert set(ids(f"/console/jobs/?asset={second.asset_id}")) == {str(j.pk) for j in [*on_second, step]}
    assert set(ids(f"/console/jobs/?q={second.asset.hostname[-3:]}")) >= {str(j.pk) for j in on_second}
    assert set(ids("/console/jobs/?requester=w-psa")) == set(ids("/console/jobs/"))
    assert ids("/console/jobs/?requester=nobody") == []
    assert len(ids(f"/console/jobs/?psa_task={world['task'].pk}")) == 6
    assert len(ids(f"/console/jobs/?psa_case={world['task'].case_id}")) == 6
    today = timezone.now().date()
    assert len(ids(f"/console/jobs/?created_from={today}&created_to={today}")) == 6
    assert ids(f"/console/jobs/?created_to={today - timedelta(days=1)}") == []

    # Sorted by kind, ascending: the script jobs before the step job.
    body = client.get("/console/jobs/?sort=kind").content.decode()
    assert body.index(str(on_first[0].pk)) < body.index(str(step.pk))
    body = client.get("/console/jobs/?sort=-kind").content.decode()
    assert body.index(str(step.pk)) < body.index(str(on_first[0].pk))

    # Pages of 50, newest first.
    more = script_jobs(world, 50)
    page_one, page_two = (
        client.get("/console/jobs/").content.decode(),
        client.get("/console/jobs/?page=2").content.decode(),
    )
    assert str(more[-1].pk) in page_one and str(on_first[0].pk) not in page_one
    assert str(on_first[0].pk) in page_two


def test_a_bad_filter_answers_400_with_its_field_and_reason(world):
    response = world["client"].get("/console/jobs/?psa_task=not-a-uuid&created_from=yesterday")
    assert response.status_code == 400
    body = response.content.decode()
    assert "PSA task: Enter a valid UUID." in body
    assert "Created on or after: Enter a valid date." in body


def test_htmx_gets_the_list_alone(world):
    script_jobs(world, 2)
    response = world["client"].get("/console/jobs/?status=queued", HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert response.status_code == 200
    assert body.lstrip().startswith('<div id="list"') and "<html" not in body
    assert 'hx-get="/console/jobs/?status=queued"' in body  # it reloads at its own address


def test_the_job_list_costs_the_same_queries_for_10_and_200_jobs(world):
    """Two kinds and a batch on the page: one query per kind for the page's jobs and per kind for
    the batches' progress, whatever the number of rows."""
    client = world["client"]

    def newest_of_every_kind():
        scripting.create_script_jobs(
            world["psa"],
            script_id=world["script"].pk,
            psa_task_id=world["task"].pk,
            asset_ids=[world["agents"][1].asset_id],
        )
        create_step_job(world["psa"], asset=world["agents"][2].asset, task=world["task"], steps=1)

    script_jobs(world, 10)
    newest_of_every_kind()
    small, response = queries(client, "/console/jobs/")
    assert response.content.decode().count("data-job-id=") == 12  # the batch row has an empty one
    script_jobs(world, 190)
    newest_of_every_kind()
    large, response = queries(client, "/console/jobs/")
    assert response.content.decode().count('data-job-id="') == 50
    assert large == small
    partial, _ = queries(client, "/console/jobs/?page=2", HTTP_HX_REQUEST="true")
    assert partial <= small


@pytest.mark.parametrize("sort", ["requester", "-requester"])
def test_the_job_list_sorted_by_requester_costs_the_same_queries_for_10_and_200_jobs(world, sort):
    """Sorted by requester, each requester's first jobs are read apart within the page's one query
    (on PostgreSQL): the same queries whatever the number of jobs, and the pages in order."""
    from scripting.models import ScriptJob

    client = world["client"]

    def by_both(n: int) -> None:
        script_jobs(world, n)
        for _ in range(n):
            scripting.create_script_job(
                world["tech"],
                script_id=world["script"].pk,
                asset_id=world["agents"][1].asset_id,
                psa_task_id=world["task"].pk,
            )

    def shown(page) -> list[str]:
        return re.findall(r'data-job-id="([^"]+)"', page.content.decode())

    by_both(5)
    small, response = queries(client, f"/console/jobs/?sort={sort}")
    assert len(shown(response)) == 10
    by_both(95)
    large, first_page = queries(client, f"/console/jobs/?sort={sort}")
    second, second_page = queries(client, f"/console/jobs/?sort={sort}&page=2", HTTP_HX_REQUEST="true")
    assert large == small and second <= small
    # Ascending: the technician's jobs ("tech" before "w-psa") oldest first; descending: the PSA's newest first.
    first = world["tech"] if sort == "requester" else world["psa"]
    order = ("created_at", "id") if sort == "requester" else ("-created_at", "-id")
    expected = [
        str(pk) for pk in ScriptJob.objects.filter(requested_by=first).order_by(*order).values_list("pk", flat=True)
    ]
    assert shown(first_page) + shown(second_page) == expected


# --- assets --------------------------------------------------------------------------------------


def test_the_asset_list_shows_the_sites_assets_with_their_state(world):
    seen, stale, _never = world["agents"]
    Agent.objects.filter(pk=seen.pk).update(last_seen_at=timezone.now(), version="2.1.0")
    Agent.objects.filter(pk=stale.pk).update(last_seen_at=timezone.now() - timedelta(days=1), version="2.0.0")
    client = world["client"]
    page = client.get("/console/assets/").content.decode()
    for agent in world["agents"]:
        assert f'data-asset-id="{agent.asset_id}"' in page
    assert f'data-asset-id="{world["other"].asset_id}"' not in page

    def ids(path: str) -> set[str]:
        body = client.get(path).content.decode()
        return {str(a.asset_id) for a in [*world["agents"], world["other"]] if f'data-asset-id="{a.asset_id}"' in body}

    assert ids("/console/assets/?online=yes") == {str(seen.asset_id)}
    assert ids("/console/assets/?online=no") == {str(stale.asset_id), str(_never.asset_id)}
    assert ids("/console/assets/?agent_version=2.0.0") == {str(stale.asset_id)}
    assert ids("/console/assets/?q=alpha-1") == {str(stale.asset_id)}
    assert ids("/console/assets/?os=Linux") == {str(a.asset_id) for a in world["agents"]}
    assert ids("/console/assets/?site=alpha") == {str(a.asset_id) for a in world["agents"]}
    assert client.get("/console/assets/?site=beta").status_code == 400  # not a site it may choose
    body = client.get("/console/assets/?sort=-hostname").content.decode()
    assert body.index("alpha-2") < body.index("alpha-0")


def test_an_agent_rebooting_within_its_grace_is_shown_rebooting_not_offline(world):
    rebooting, stale, _never = world["agents"]
    an_hour_ago = timezone.now() - timedelta(hours=1)
    Agent.objects.filter(pk=rebooting.pk).update(
        last_seen_at=an_hour_ago, rebooting_until=timezone.now() + timedelta(minutes=5)
    )
    Agent.objects.filter(pk=stale.pk).update(last_seen_at=an_hour_ago, rebooting_until=an_hour_ago)  # grace over
    client = world["client"]

    def ids(path: str) -> set[str]:
        body = client.get(path).content.decode()
        return {str(a.asset_id) for a in world["agents"] if f'data-asset-id="{a.asset_id}"' in body}

    assert ids("/console/assets/?online=rebooting") == {str(rebooting.asset_id)}
    assert ids("/console/assets/?online=no") == {str(stale.asset_id), str(_never.asset_id)}
    assert ids("/console/assets/?online=yes") == set()
    page = client.get(f"/console/assets/{rebooting.asset_id}/").content.decode()
    assert '<span class="rebooting">rebooting</span>' in page
    page = client.get(f"/console/assets/{stale.asset_id}/").content.decode()
    assert '<span class="offline">offline</span>' in page


def test_the_asset_list_costs_the_same_queries_for_3_and_60_assets(world):
    small, _ = queries(world["client"], "/console/assets/")
    for n in range(57):
        make_agent(world["alpha"], f"more-{n:02}")
    large, response = queries(world["client"], "/console/assets/")
    assert response.content.decode().count("data-asset-id=") == 50
    assert large == small


def test_the_asset_page_shows_facts_agent_jobs_evidence_and_run_here(world):
    agent = world["agents"][0]
    Agent.objects.filter(pk=agent.pk).update(last_seen_at=timezone.now(), version="2.1.0")
    AssetFacts.objects.update_or_create(
        asset=agent.asset,
        defaults={
            "facts": {"hostname": "alpha-0", "os": {"name": "Debian", "version": "13"}},
            "facts_hash": "ab" * 32,
            "reported_at": timezone.now(),
        },
    )
    job = script_jobs(world, 1, agent)[0]
    response = world["client"].get(f"/console/assets/{agent.asset_id}/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "2.1.0" in body and '<span class="online">online</span>' in body
    assert "<h3>os</h3>" in body and "Debian" in body
    assert f'data-job-id="{job.pk}"' in body
    assert "<h2>Evidence</h2>" in body
    assert f'href="/console/scripts/run/?asset={agent.asset_id}"' in body
    run = world["client"].get(f"/console/scripts/run/?asset={agent.asset_id}").content.decode()
    assert f'value="{agent.asset_id}" id="asset-{agent.asset_id}" checked>' in run  # the picker chose it


def test_another_sites_asset_is_not_found(world):
    response = world["client"].get(f"/console/assets/{world['other'].asset_id}/")
    assert response.status_code == 404
    body = response.content.decode()
    assert "Not found" in body and 'href="/console/assets/"' in body  # the styled page, with navigation


def test_the_asset_page_costs_the_same_queries_for_1_and_30_jobs(world):
    agent = world["agents"][0]
    script_jobs(world, 1, agent)
    small, _ = queries(world["client"], f"/console/assets/{agent.asset_id}/")
    script_jobs(world, 29, agent)
    large, _ = queries(world["client"], f"/console/assets/{agent.asset_id}/")
    assert large == small


def test_a_slice_of_the_job_list_is_the_slice_of_all_its_rows_in_every_order(world):
    """Each kind's table is sorted and cut before the union (on PostgreSQL), and sorted by requester
    each requester's first jobs are read apart: a page must still be exactly that page of every
    job, whichever column sorts them, ties (the same time) broken by id."""
    from rmm.engine.services import listing
    from scripting.models import ScriptJob
    from tests.stepkind.models import StepJob

    for n in range(12):
        requester = world["tech"] if n % 3 == 0 else world["psa"]
        scripting.create_script_job(
            requester,
            script_id=world["script"].pk,
            asset_id=world["agents"][n % 3].asset_id,
            psa_task_id=world["task"].pk,
        )
        create_step_job(requester, asset=world["agents"][(n + 1) % 3].asset, task=world["task"], steps=1)
    same_time = timezone.now()
    for model in (ScriptJob, StepJob):
        model.objects.filter(pk__in=model.objects.order_by("created_at").values("pk")[3:7]).update(created_at=same_time)
    rows = listing.job_rows(world["tech"], listing.JobQuery())
    for ordering in (
        ("-created", "-id"),
        ("kind", "created", "id"),
        ("-hostname", "created", "id"),
        ("status", "-created", "-id"),
        ("requester", "created", "id"),
        ("-requester", "-created", "-id"),
    ):
        every = [row["id"] for row in rows.order_by(*ordering)]
        assert len(every) == 24
        for start, stop in ((0, 5), (5, 13), (20, 30)):
            assert [row["id"] for row in rows.order_by(*ordering)[start:stop]] == every[start:stop], ordering


@pytest.mark.parametrize("ids", [1000, 1])
def test_the_job_search_finds_jobs_by_hostname_requester_or_id_with_few_or_many_matches(world, monkeypatch, ids):
    """The search passes matching assets and users as ids, or as a subquery when more match than
    ``SEARCH_IDS``: the jobs found are the same."""
    from rmm.engine.services import listing

    monkeypatch.setattr(listing, "SEARCH_IDS", ids)
    first, second, third = world["agents"]
    on_first = script_jobs(world, 2, first)
    on_second = script_jobs(world, 1, second)
    by_tech = scripting.create_script_job(
        world["tech"], script_id=world["script"].pk, asset_id=third.asset_id, psa_task_id=world["task"].pk
    )
    client = world["client"]

    def found(text: str) -> set[str]:
        body = client.get(f"/console/jobs/?q={text}").content.decode()
        every = [*on_first, *on_second, by_tech]
        return {str(job.pk) for job in every if f'data-job-id="{job.pk}"' in body}

    assert found("alpha-") == {str(job.pk) for job in [*on_first, *on_second, by_tech]}
    assert found(first.asset.hostname) == {str(job.pk) for job in on_first}
    assert found("TEC") == {str(by_tech.pk)}  # part of the requester's name, any case
    assert found(str(on_second[0].pk)) == {str(on_second[0].pk)}
    assert found("nothing-like-it") == set()
