"""The console's home: what a technician of one site sees of its agents and jobs, the panels only
some roles get, and a constant number of queries whatever the rows."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from rmm.access import services as access_services
from rmm.engine.services import kill_switches
from rmm.inventory import services as inventory
from rmm.inventory.models import Agent, Asset
from scripting import services as scripting
from scripting.models import ScriptJob
from sessions import services as sessions
from tests.helpers import approved_authority, approved_script, make_agent, otp_login
from tests.stepkind.jobs import create_step_job
from tests.stepkind.models import StepJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    alpha = inventory.get_or_create_site("alpha")
    beta = inventory.get_or_create_site("beta")
    psa = access_services.ensure_user_with_role("w-psa", "psa")
    access_services.grant_site(psa, None)
    author = access_services.ensure_user_with_role("w-author", "technician")
    boss = access_services.ensure_user_with_role("w-boss", "approver")
    access_services.grant_site(boss, None)
    techs = {}
    for site in (alpha, beta):
        techs[site.name] = access_services.ensure_user_with_role(f"tech-{site.name}", "technician")
        access_services.grant_site(techs[site.name], site)
    return {
        "alpha": alpha,
        "beta": beta,
        "psa": psa,
        "author": author,
        "boss": boss,
        "techs": techs,
        "tasks": {site.name: approved_authority(site, psa) for site in (alpha, beta)},
        "script": approved_script(author, boss),
    }


def client_of(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def agents(site, n: int, prefix: str) -> list[Agent]:
    return [make_agent(site, f"{prefix}-{i}")[0] for i in range(n)]


def jobs(w, agent, n: int, *, status: str = "", age: timedelta = timedelta(0)) -> list:
    made = [
        scripting.create_script_job(
            w["psa"],
            script_id=w["script"].pk,
            asset_id=agent.asset_id,
            psa_task_id=w["tasks"][agent.asset.site.name].pk,
        )
        for _ in range(n)
    ]
    changes = {"created_at": timezone.now() - age} if age else {}
    if status:
        changes["status"] = status
    if changes:
        ScriptJob.objects.filter(pk__in=[job.pk for job in made]).update(**changes)
    return made


def count(body: str, name: str) -> int:
    found = re.search(rf'data-count="{name}">(\d+)<', body)
    assert found, name
    return int(found.group(1))


def status_row(body: str, status: str) -> tuple[int, int]:
    row = re.search(
        rf'<tr data-status="{status}">.*?<td data-window="day">(\d+)</td><td data-window="week">(\d+)</td>', body
    )
    assert row, status
    return int(row.group(1)), int(row.group(2))


def test_the_dashboard_counts_the_agents_of_the_users_sites_by_presence(world):
    now = timezone.now()
    online, stale, rebooting, never, revoked = agents(world["alpha"], 5, "alpha")
    Agent.objects.filter(pk=online.pk).update(last_seen_at=now)
    Agent.objects.filter(pk=stale.pk).update(last_seen_at=now - timedelta(days=1))
    Agent.objects.filter(pk=rebooting.pk).update(
        last_seen_at=now - timedelta(days=1), rebooting_until=now + timedelta(minutes=5)
    )
    Agent.objects.filter(pk=revoked.pk).update(last_seen_at=now, revoked_at=now)
    Asset.objects.create(site=world["alpha"], hostname="no-agent")  # never enrolled: never seen
    for agent in agents(world["beta"], 3, "beta"):
        Agent.objects.filter(pk=agent.pk).update(last_seen_at=now)

    body = client_of(world["techs"]["alpha"]).get("/console/").content.decode()
    assert (count(body, "online"), count(body, "offline"), count(body, "rebooting")) == (1, 1, 1)
    assert (count(body, "never_seen"), count(body, "revoked"), count(body, "assets")) == (2, 1, 6)
    assert 'href="/console/assets/?online=no"' in body  # each number opens the matching assets

    body = client_of(world["techs"]["beta"]).get("/console/").content.decode()
    assert (count(body, "online"), count(body, "offline"), count(body, "assets")) == (3, 0, 3)


def test_a_retired_asset_leaves_the_dashboard_s_counts(world):
    now = timezone.now()
    kept, gone = agents(world["alpha"], 2, "retiring")
    Agent.objects.filter(pk__in=[kept.pk, gone.pk]).update(last_seen_at=now)
    admin = access_services.ensure_user_with_role("alpha-admin", "admin")
    access_services.grant_site(admin, world["alpha"])
    inventory.retire_asset(admin, gone.asset, "decommissioned")

    body = client_of(world["techs"]["alpha"]).get("/console/").content.decode()
    assert (count(body, "assets"), count(body, "online"), count(body, "revoked")) == (1, 1, 0)


def test_the_dashboard_counts_jobs_of_every_kind_by_status_over_24_hours_and_7_days(world):
    (alpha_agent,) = agents(world["alpha"], 1, "alpha")
    (beta_agent,) = agents(world["beta"], 1, "beta")
    jobs(world, alpha_agent, 2)  # queued now
    jobs(world, alpha_agent, 3, status="succeeded", age=timedelta(days=2))
    jobs(world, alpha_agent, 1, status="failed", age=timedelta(hours=2))
    jobs(world, alpha_agent, 4, status="failed", age=timedelta(days=10))  # too old to count
    step = create_step_job(world["psa"], asset=alpha_agent.asset, task=world["tasks"]["alpha"], steps=1)
    StepJob.objects.filter(pk=step.pk).update(status="failed")
    jobs(world, beta_agent, 5, status="failed")

    response = client_of(world["techs"]["alpha"]).get("/console/")
    body = response.content.decode()
    assert status_row(body, "queued") == (2, 2)
    assert status_row(body, "succeeded") == (0, 3)
    assert status_row(body, "failed") == (2, 2)  # a script job and a step job; none of beta's
    assert status_row(body, "running") == (0, 0)
    assert (count(body, "jobs-day"), count(body, "jobs-week")) == (4, 7)
    assert count(body, "failures-week") == 2
    assert 'href="/console/jobs/?status=failed"' in body
    chart = json.loads(re.search(r'id="job-chart-data" type="application/json">(.*?)</script>', body).group(1))
    assert dict(zip(chart["statuses"], chart["week"], strict=True))["succeeded"] == 3
    assert dict(zip(chart["statuses"], chart["day"], strict=True))["failed"] == 2
    assert 'src="/static/vendor/chart.js/chart.umd.min.js"' in body
    assert "<canvas" in body and 'role="img"' in body

    # The failures needing attention link to their job pages, newest first; beta's are not there.
    failed = ScriptJob.objects.filter(asset=alpha_agent.asset, status="failed").order_by("-created_at").first()
    assert f'href="/console/jobs/script/{failed.pk}/"' in body
    assert f'data-job-id="{step.pk}"' in body
    assert not any(f'data-job-id="{job.pk}"' in body for job in ScriptJob.objects.filter(asset=beta_agent.asset))
    old = ScriptJob.objects.filter(created_at__lt=timezone.now() - timedelta(days=7))
    assert not any(f'data-job-id="{job.pk}"' in body for job in old)


def test_pending_approvals_show_only_to_those_who_may_approve(world):
    (agent,) = agents(world["alpha"], 1, "alpha")
    gated = approved_script(world["author"], world["boss"], name="gated", requires_approval=True)
    scripting.create_script_job(
        world["psa"], script_id=gated.pk, asset_id=agent.asset_id, psa_task_id=world["tasks"]["alpha"].pk
    )
    body = client_of(world["techs"]["alpha"]).get("/console/").content.decode()
    assert 'id="approvals"' not in body

    approver = access_services.ensure_user_with_role("approver-alpha", "approver")
    access_services.grant_site(approver, world["alpha"])
    client = Client()
    otp_login(client, approver)
    body = client.get("/console/").content.decode()
    assert count(body, "approvals") == 1
    assert 'href="/admin/approvals/"' in body

    # A site's artefact (a session policy version) counts for the approvers of that site only.
    admin = access_services.ensure_user_with_role("admin-all", "admin")
    access_services.grant_site(admin, None)
    sessions.propose_policy(admin, site="beta", allowed=False)
    assert count(client.get("/console/").content.decode(), "approvals") == 1
    sessions.propose_policy(admin, site="alpha", allowed=False)
    assert count(client.get("/console/").content.decode(), "approvals") == 2


def test_engaged_kill_switches_are_counted_and_linked(world):
    (agent,) = agents(world["alpha"], 1, "alpha")
    kill_switches.engage(world["psa"], scope="site", target="beta", reason="beta only")
    body = client_of(world["techs"]["alpha"]).get("/console/").content.decode()
    assert count(body, "kill-switches") == 0
    kill_switches.engage(world["psa"], scope="asset", target=str(agent.asset_id), reason="one asset")
    body = client_of(world["techs"]["alpha"]).get("/console/").content.decode()
    assert count(body, "kill-switches") == 1
    assert 'href="/console/kill-switches/" data-count="kill-switches"' in body


def queries(client) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get("/console/")
    assert response.status_code == 200
    return len(captured)


def test_the_dashboard_costs_the_same_queries_for_few_and_many_rows(world):
    """One query for the agents, one for the jobs by status, one per failing status, one per kind
    among the failures shown: the same for 3 jobs as for 80."""
    client = client_of(world["techs"]["alpha"])
    (first,) = agents(world["alpha"], 1, "alpha")
    jobs(world, first, 1, status="failed")
    jobs(world, first, 1, status="lost")
    step = create_step_job(world["psa"], asset=first.asset, task=world["tasks"]["alpha"], steps=1)
    StepJob.objects.filter(pk=step.pk).update(status="timed_out")
    idle = agents(world["alpha"], 4, "idle")  # engaged switches stop no job here
    kill_switches.engage(world["psa"], scope="asset", target=str(idle[0].asset_id), reason="one")
    small = queries(client)

    more = agents(world["alpha"], 10, "more")
    for agent in more[:5]:
        jobs(world, agent, 6, status="failed")
        jobs(world, agent, 4, status="timed_out", age=timedelta(days=3))
        jobs(world, agent, 4)
    for agent in more[5:]:
        step = create_step_job(world["psa"], asset=agent.asset, task=world["tasks"]["alpha"], steps=1)
    StepJob.objects.filter(pk=step.pk).update(status="lost")  # both kinds among the failures shown
    for agent in idle[1:]:
        kill_switches.engage(world["psa"], scope="asset", target=str(agent.asset_id), reason="more")
    large = queries(client)
    assert large == small
