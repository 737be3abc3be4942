"""A technician watches a running script's output in a real browser (Debian's chromium through
Playwright): the real agent runs a script that prints, sleeps and prints again; its first line
is on the job page, marked as not the recorded result, while the job still runs; the signed
result replaces it when the job ends, without a reload."""

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.flows import agent_once, console_users, make_world, publish, run_job, sign_in_to

pytestmark = pytest.mark.browser

PASSWORD = "correct horse battery staple"
LIVE = 15_000  # ms a live update may take
SLEEP = 8  # seconds between the script's two lines


def test_the_first_line_is_on_the_job_page_before_the_job_ends(server, browser):
    from playwright.sync_api import expect

    technician = f"tech-output-{uuid.uuid4().hex[:6]}"
    console_users(server, {technician: ("technician", [])}, PASSWORD)
    w = make_world(server)
    agent_once(server, w)  # a first check-in: the server learns the agent can stream output
    script = publish(server, w, f"echo first line\nsleep {SLEEP}\necho second line\n")
    job = run_job(server, w, script["id"])
    job_path = f"/console/jobs/script/{job['id']}/"

    context = browser.new_context(base_url=server.url)
    try:
        page = context.new_page()
        sign_in_to(page, technician, PASSWORD, job_path)
        expect(page.locator("#live-state")).to_have_attribute("data-state", "open", timeout=LIVE)
        page.evaluate("window.__noReload = 1")

        with ThreadPoolExecutor(1) as pool:
            ran = pool.submit(agent_once, server, w)
            expect(page.locator("#live-stdout")).to_have_text("first line\n", timeout=LIVE)
            assert not ran.done(), "the first line was shown only once the job had ended"
            expect(page.locator("#job-status")).to_have_text("running")
            expect(page.locator("#live-output")).to_contain_text("not the recorded result")
            expect(page.locator("#stdout")).to_have_count(0)
            ran.result(timeout=120)

        expect(page.locator("#job-status")).to_have_text("succeeded", timeout=LIVE)
        expect(page.locator("#stdout")).to_have_text("first line\nsecond line\n", timeout=LIVE)
        expect(page.locator("#live-output")).to_have_count(0)
        assert page.evaluate("window.__noReload") == 1
    finally:
        context.close()
