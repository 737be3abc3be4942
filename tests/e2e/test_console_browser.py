"""A technician watches a job run in a real browser (Debian's chromium through Playwright).

The job is queued through the API, the technician signs in and opens the job page and the job
list, the real agent runs it, and both pages show the outcome live over the websocket, without
a reload.
"""

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.flows import agent_once, console_users, make_world, publish, run_job, sign_in_to

pytestmark = pytest.mark.browser

PASSWORD = "correct horse battery staple"
LIVE = 15_000  # ms a live update may take


def test_technician_watches_a_job_finish_live(server, browser):
    from playwright.sync_api import expect

    technician = f"tech-browser-{uuid.uuid4().hex[:6]}"
    with ThreadPoolExecutor(1) as pool:
        users = pool.submit(console_users, server, {technician: ("technician", [])}, PASSWORD)
        w = make_world(server)
        users.result()
    script = publish(server, w, "echo hello from the browser test\n")
    job = run_job(server, w, script["id"])
    assert job["status"] == "queued"
    job_path = f"/console/jobs/script/{job['id']}/"

    context = browser.new_context(base_url=server.url)
    try:
        page = context.new_page()
        sign_in_to(page, technician, PASSWORD, job_path)
        expect(page.locator("#job-status")).to_have_text("queued")
        expect(page.locator("#stdout")).to_have_count(0)

        jobs = context.new_page()
        jobs.goto("/console/jobs/")
        row = jobs.locator(f'#jobs tr[data-job-id="{job["id"]}"]')
        expect(row.locator('[data-field="status"]')).to_have_text("queued")

        # Both pages are listening before anything happens; marks on window die with a reload.
        for p in (page, jobs):
            expect(p.locator("#live-state")).to_have_attribute("data-state", "open", timeout=LIVE)
            p.evaluate("window.__noReload = 1")

        agent_once(server, w)

        expect(page.locator("#job-status")).to_have_text("succeeded", timeout=LIVE)
        expect(page.locator("#stdout")).to_have_text("hello from the browser test\n", timeout=LIVE)
        expect(page.locator("#exit-code")).to_have_text("0")
        expect(row.locator('[data-field="status"]')).to_have_text("succeeded", timeout=LIVE)
        expect(row.locator('[data-field="completed_at"]')).not_to_have_text("")
        assert page.evaluate("window.__noReload") == 1
        assert jobs.evaluate("window.__noReload") == 1
    finally:
        context.close()
