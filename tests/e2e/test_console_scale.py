"""A technician pages through 1,000 jobs and filters them in a real browser (Debian's chromium
through Playwright), over a real server: every page of 50 holds new jobs, newest first, until the
last; the status, requester and date filters and the search narrow the list."""

import re
import uuid

import pytest

from tests.e2e.flows import console_errors, console_users, make_world, publish, sign_in_to

pytestmark = pytest.mark.browser

PASSWORD = "correct horse battery staple"
JOBS = 1000
PAGE = 50


def seed_jobs(server, w, script_id: str, technician: str) -> list[str]:
    """1,000 finished script jobs on the world's asset through the ORM, one a minute back in time:
    every tenth failed, every fourth requested by the technician (the others by the PSA). Their
    ids, newest first."""
    code = f"""
from datetime import timedelta
from django.contrib.auth import get_user_model
from django.utils import timezone
from rmm.inventory.models import Asset
from scripting.models import ScriptJob
User = get_user_model()
asset = Asset.objects.get(pk={w["asset"]!r})
psa = User.objects.filter(username__startswith="psa-").first()
tech = User.objects.get(username={technician!r})
jobs = ScriptJob.objects.bulk_create([
    ScriptJob(script_id={script_id!r}, asset=asset, site_id=asset.site_id, psa_task_id={w["task"]!r},
              status="failed" if n % 10 == 0 else "succeeded", requested_by=tech if n % 4 == 0 else psa)
    for n in range({JOBS})
])
now = timezone.now()
for n, job in enumerate(jobs):
    job.created_at = now - timedelta(minutes=n)
ScriptJob.objects.bulk_update(jobs, ["created_at"])
print(" ".join(str(job.pk) for job in jobs))
"""
    return server.manage("shell", "--verbosity", "0", "-c", code).stdout.split()


def test_technician_pages_through_1000_jobs_and_filters_them(server, browser):
    from playwright.sync_api import expect

    technician = f"tech-scale-{uuid.uuid4().hex[:6]}"
    site = f"site-{uuid.uuid4().hex[:6]}"
    w = make_world(server, site)
    console_users(server, {technician: ("technician", [site])}, PASSWORD)
    script = publish(server, w, "echo scale\n")
    newest_first = seed_jobs(server, w, script["id"], technician)
    assert len(newest_first) == JOBS

    context = browser.new_context(base_url=server.url)
    page = context.new_page()
    errors = console_errors(page)
    try:
        sign_in_to(page, technician, PASSWORD, "/console/jobs/")

        rows = page.locator("#jobs tbody tr")
        ids_of_page = "() => [...document.querySelectorAll('#jobs tbody tr')].map((tr) => tr.dataset.jobId)"
        seen: list[str] = []
        for number in range(1, JOBS // PAGE + 1):
            expect(page.locator("ul.pagination li.active")).to_have_text(str(number))
            expect(rows).to_have_count(PAGE)
            seen += page.evaluate(ids_of_page)
            if number < JOBS // PAGE:
                page.locator("ul.pagination a[rel=next]").click()
                page.wait_for_url(re.compile(rf"page={number + 1}\b"))
        assert seen == newest_first  # every job once, newest first
        expect(page.locator("ul.pagination a[rel=next]")).to_have_count(0)  # the last page

        # Failed jobs: every tenth, two pages.
        page.goto("/console/jobs/")
        page.select_option("#id_status", "failed")
        page.wait_for_url(re.compile(r"status=failed"))
        expect(rows).to_have_count(PAGE)
        expect(page.locator("#jobs tbody .status-succeeded")).to_have_count(0)
        page.locator("ul.pagination a[rel=next]").click()
        page.wait_for_url(re.compile(r"page=2"))
        expect(rows).to_have_count(JOBS // 10 - PAGE)
        expect(page.locator("ul.pagination a[rel=next]")).to_have_count(0)

        # The technician's own: every fourth, five pages; with failed too, every twentieth.
        page.goto(f"/console/jobs/?requester={technician}&page=5")
        expect(rows).to_have_count(PAGE)
        expect(page.locator("ul.pagination a[rel=next]")).to_have_count(0)
        page.goto(f"/console/jobs/?requester={technician}&status=failed")
        expect(rows).to_have_count(JOBS // 20)

        # A search for part of the technician's name finds the same jobs; one job's id, that job.
        page.goto("/console/jobs/")
        page.fill("#id_q", technician)
        page.wait_for_url(re.compile(r"q="))
        expect(page.locator("#jobs tbody td", has_text="psa-")).to_have_count(0)
        expect(rows).to_have_count(PAGE)
        page.fill("#id_q", seen[777])
        expect(rows).to_have_count(1)
        expect(page.locator(f'#jobs tr[data-job-id="{seen[777]}"]')).to_have_count(1)
        assert errors == [], errors
    finally:
        context.close()
