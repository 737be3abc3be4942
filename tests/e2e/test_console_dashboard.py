"""A technician signs in and lands on the dashboard in a real browser (Debian's chromium through
Playwright): the agent that just ran is counted, the jobs are counted by status, Chart.js draws
both charts under the CSP, the failure links to its job page; no console error, every input
labelled, every text at WCAG AA contrast (the checks of test_console_pages).
"""

import re
import uuid

import pytest

from tests.e2e.flows import agent_once, console_errors, console_users, make_world, publish, run_job, sign_in_to
from tests.e2e.test_console_pages import PASSWORD, check_page

pytestmark = pytest.mark.browser


def test_the_dashboard_shows_the_sites_agents_and_jobs_with_charts(server, browser):
    from playwright.sync_api import expect

    technician = f"tech-dash-{uuid.uuid4().hex[:6]}"
    site = f"site-{uuid.uuid4().hex[:6]}"
    w = make_world(server, site)
    console_users(server, {technician: ("technician", [site])}, PASSWORD)
    good = publish(server, w, "echo fine\n")
    bad = publish(server, w, "exit 3\n")
    run_job(server, w, good["id"])
    agent_once(server, w)  # succeeded
    failed = run_job(server, w, bad["id"])
    agent_once(server, w)  # failed
    run_job(server, w, good["id"])  # queued

    context = browser.new_context(base_url=server.url)
    page = context.new_page()
    errors = console_errors(page)
    try:
        sign_in_to(page, technician, PASSWORD, "/console/")
        expect(page.locator("h1")).to_have_text("Dashboard")
        expect(page.locator('nav a[aria-current="page"]')).to_have_text("Dashboard")

        # Its one agent has been seen (online, or offline already: the test server's heartbeat
        # interval is one second).
        expect(page.locator('#agents [data-count="assets"]')).to_have_text("1")
        expect(page.locator('#agents [data-count="never_seen"]')).to_have_text("0")
        seen = [int(page.locator(f'#agents [data-count="{name}"]').inner_text()) for name in ("online", "offline")]
        assert sum(seen) == 1, seen
        table = page.locator("#job-status-table")
        for status, day in (("succeeded", "1"), ("failed", "1"), ("queued", "1"), ("running", "0")):
            expect(table.locator(f'tr[data-status="{status}"] td[data-window="day"]')).to_have_text(day)
        expect(page.locator('#attention [data-count="failures-week"]')).to_have_text("1")
        expect(page.locator('#kill-switches [data-count="kill-switches"]')).to_have_text("0")
        expect(page.locator("#approvals")).to_have_count(0)  # a technician approves nothing

        # Both charts drawn by Chart.js (loaded from /static/vendor/, no inline script).
        for canvas in ("chart-day", "chart-week"):
            expect(page.locator(f"canvas#{canvas}")).to_be_visible()
            page.wait_for_function(f"() => window.Chart && Chart.getChart('{canvas}') !== undefined")
            drawn = page.evaluate(f"() => Chart.getChart('{canvas}').data.datasets[0].data.reduce((a, b) => a + b, 0)")
            assert drawn == 3, canvas
            assert page.evaluate(f"() => document.getElementById('{canvas}').width") > 0
        check_page(page, errors)

        # A failure needing attention opens its job page.
        page.locator(f'#failures tr[data-job-id="{failed["id"]}"] a[href*="/console/jobs/script/"]').click()
        page.wait_for_url(re.compile(rf"/console/jobs/script/{failed['id']}/"))
        expect(page.locator("#job-status")).to_have_text("failed")
        check_page(page, errors)
    finally:
        context.close()
