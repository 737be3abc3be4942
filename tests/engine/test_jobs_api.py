"""``GET /api/v1/jobs/``: every job of every kind the caller may see, newest first, filtered by the
script-jobs list's names plus kind and PSA case, each linking to its kind's own endpoint."""

from __future__ import annotations

import dataclasses

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from rmm.engine import registry
from scripting import services as scripting
from tests.helpers import approved_authority, approved_script, make_agent


@pytest.fixture
def world(caller, site, other_site):
    psa = caller("psa", "psa")
    tech, boss = caller("tech", "technician"), caller("boss", "approver")
    script = approved_script(tech.user, boss.user)
    tasks = {s.name: approved_authority(s, psa.user) for s in (site, other_site)}
    jobs = {}
    for s in (site, other_site):
        for n in range(2):
            agent, _ = make_agent(s, f"{s.name}-{n}")
            jobs[(s.name, n)] = scripting.create_script_job(
                psa.user, script_id=script.pk, asset_id=agent.asset_id, psa_task_id=tasks[s.name].pk
            )
    return {"psa": psa, "tasks": tasks, "jobs": jobs, "site": site}


def ids(answer) -> list[str]:
    assert answer.status_code == 200, answer.content
    return [row["id"] for row in answer.json()["results"]]


def test_lists_jobs_of_the_sites_the_caller_may_see_newest_first_with_a_link(world, caller, site):
    local = caller("local", "technician", sites=[site])
    answer = local.get("/api/v1/jobs/")
    mine = [world["jobs"][("alpha", 1)], world["jobs"][("alpha", 0)]]
    assert ids(answer) == [str(job.pk) for job in mine]
    row = answer.json()["results"][0]
    job = mine[0]
    assert row == {
        "kind": "script",
        "id": str(job.pk),
        "status": job.status,
        "asset": str(job.asset_id),
        "site": "alpha",
        "psa_task_id": str(job.psa_task_id),
        "psa_case_id": str(job.psa_task.case_id),
        "batch": None,
        "created_at": row["created_at"],
        "url": f"/api/v1/script-jobs/{job.pk}/",
    }
    detail = local.get(row["url"])
    assert detail.status_code == 200 and detail.json()["id"] == str(job.pk)
    assert len(ids(world["psa"].get("/api/v1/jobs/"))) == 4


def test_filters(world):
    psa, jobs = world["psa"], world["jobs"]
    alpha = [str(jobs[("alpha", n)].pk) for n in (1, 0)]
    case = world["tasks"]["alpha"].case_id
    assert ids(psa.get("/api/v1/jobs/", {"psa_case": str(case)})) == alpha
    assert ids(psa.get("/api/v1/jobs/", {"psa_task": str(world["tasks"]["alpha"].pk)})) == alpha
    one = jobs[("beta", 0)]
    assert ids(psa.get("/api/v1/jobs/", {"asset": str(one.asset_id), "kind": "script"})) == [str(one.pk)]
    assert ids(psa.get("/api/v1/jobs/", {"status": "succeeded"})) == []
    assert len(ids(psa.get("/api/v1/jobs/", {"status": one.status}))) == 4


@pytest.mark.parametrize(
    "query, field",
    [
        ({"kind": "no-such-kind"}, "kind"),
        ({"status": "done"}, "status"),
        ({"asset": "x"}, "asset"),
        ({"psa_case": "1"}, "psa_case"),
    ],
)
def test_bad_filters_are_refused_by_name(world, query, field):
    answer = world["psa"].get("/api/v1/jobs/", query)
    assert answer.status_code == 400
    assert field in answer.json()


def test_every_kind_in_one_list_in_a_constant_number_of_queries(world, monkeypatch):
    """Two kinds (the second a copy of the script kind over the same table, so each job shows once
    per kind): one union, the columns paired alike, a page and a count whatever the job count."""
    script = registry.get("script")
    monkeypatch.setitem(registry._KINDS, "copy", dataclasses.replace(script, name="copy"))
    psa = world["psa"]
    with CaptureQueriesContext(connection) as few:
        rows = psa.get("/api/v1/jobs/").json()["results"]
    assert sorted(row["kind"] for row in rows) == ["copy"] * 4 + ["script"] * 4
    assert {row["url"] for row in rows if row["kind"] == "copy"} == {
        row["url"] for row in rows if row["kind"] == "script"
    }
    assert ids(psa.get("/api/v1/jobs/", {"kind": "copy"})) == ids(psa.get("/api/v1/jobs/", {"kind": "script"}))
    job = world["jobs"][("alpha", 0)]
    scripting.create_script_job(
        psa.user, script_id=job.script_id, asset_id=job.asset_id, psa_task_id=world["tasks"]["alpha"].pk
    )
    with CaptureQueriesContext(connection) as more:
        assert psa.get("/api/v1/jobs/").json()["count"] == 10
    assert len(more.captured_queries) == len(few.captured_queries)


def test_a_kind_without_an_endpoint_of_its_own_is_listed_without_a_link(world, caller, site):
    """The test-only step kind has no API of its own: its jobs are listed, their url is null."""
    from tests.stepkind.jobs import create_step_job

    agent, _ = make_agent(site, "stepper")
    job = create_step_job(world["psa"].user, asset=agent.asset, task=world["tasks"]["alpha"])
    rows = world["psa"].get("/api/v1/jobs/", {"kind": "step"}).json()["results"]
    assert [(row["id"], row["kind"], row["url"]) for row in rows] == [(str(job.pk), "step", None)]
    assert len(ids(world["psa"].get("/api/v1/jobs/"))) == 5


def test_a_batch_s_jobs_name_it_and_are_found_by_it(world, site):
    psa = world["psa"]
    agents = [make_agent(site, f"batch-{n}")[0] for n in range(3)]
    job = world["jobs"][("alpha", 0)]
    body = {
        "script": str(job.script_id),
        "assets": [str(a.asset_id) for a in agents],
        "psa_task_id": str(job.psa_task_id),
    }
    answer = psa.post("/api/v1/script-jobs/batch/", body, format="json")
    assert answer.status_code == 201, answer.content
    batch = answer.json()["batch"]
    rows = psa.get("/api/v1/jobs/", {"batch": batch}).json()["results"]
    assert sorted(row["id"] for row in rows) == sorted(j["id"] for j in answer.json()["jobs"])
    assert {row["batch"] for row in rows} == {batch}
    assert psa.get("/api/v1/jobs/", {"batch": "nope"}).status_code == 400


def test_a_count_within_the_cap_is_exact(world, settings):
    settings.RMM_API_COUNT_LIMIT = 4
    body = world["psa"].get("/api/v1/jobs/", {"limit": 1}).json()
    assert (body["count"], body["count_exact"], len(body["results"])) == (4, True, 1)
    last = world["psa"].get("/api/v1/jobs/", {"kind": "script", "offset": 3}).json()
    assert (last["count"], last["count_exact"], len(last["results"]), last["next"]) == (4, True, 1, None)


def test_past_the_cap_the_count_is_a_lower_bound_and_next_still_walks_every_job(world, settings):
    """Four jobs, counted up to 2: the count stops one job past the cap or past the page's end and
    says it is not exact, and ``next`` leads through every job once, newest first."""
    settings.RMM_API_COUNT_LIMIT = 2
    psa = world["psa"]
    every = ids(psa.get("/api/v1/jobs/"))  # and the token's use is recorded: not again within the walk
    counts, seen, cost, url = [], [], set(), "/api/v1/jobs/?limit=1"
    while url:
        with CaptureQueriesContext(connection) as captured:
            body = psa.get(url).json()
        counts.append((body["count"], body["count_exact"]))
        seen += [row["id"] for row in body["results"]]
        cost.add(len(captured))
        url = body["next"]
    assert counts == [(3, False), (3, False), (4, False), (4, True)]
    assert len(cost) == 1
    assert seen == every
    # A page that reaches past the last job counts them all.
    wide = psa.get("/api/v1/jobs/", {"limit": 4}).json()
    assert (wide["count"], wide["count_exact"], len(wide["results"]), wide["next"]) == (4, True, 4, None)
