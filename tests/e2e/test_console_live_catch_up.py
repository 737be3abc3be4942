"""The console's live parts in a real browser, with the real agent: a job that ends while the
page's socket is not open yet, or is reconnecting, still shows as ended without a reload (its
event went to no one, so the page catches up when its socket opens); and a list's own reload on
job events never undoes nor loses a person's sort, page or filter."""

import re
import uuid

import pytest

from tests.e2e.flows import (
    agent_once,
    console_errors,
    console_users,
    make_world,
    publish,
    run_job,
    sign_in_to,
    wait_for,
)

pytestmark = pytest.mark.browser

PASSWORD = "correct horse battery staple"
LIVE = 15_000  # ms a live update may take


@pytest.fixture
def job(server):
    technician = f"tech-catch-up-{uuid.uuid4().hex[:6]}"
    console_users(server, {technician: ("technician", [])}, PASSWORD)
    w = make_world(server)
    script = publish(server, w, "echo caught up\n")
    return technician, w, run_job(server, w, script["id"])


def test_a_job_that_ends_before_the_page_s_socket_opens_shows_as_ended(server, browser, job):
    """The page is rendered with the job queued; the agent runs it before the page's script (and
    so its socket) has loaded. The first open brings the page up to date."""
    from playwright.sync_api import expect

    technician, w, queued = job
    context = browser.new_context(base_url=server.url)
    try:
        page = context.new_page()
        sign_in_to(page, technician, PASSWORD, "/console/")
        held = []

        def hold_live_js(route):  # the page has its HTML; the job ends before its script loads
            if not held:
                held.append(agent_once(server, w))
            route.continue_()

        page.route(re.compile(r"/static/console/live\b[^/]*\.js$"), hold_live_js)
        page.goto(f"/console/jobs/script/{queued['id']}/")
        assert held, "the page loaded no live.js"
        expect(page.locator("#live-state")).to_have_attribute("data-state", "open", timeout=LIVE)
        expect(page.locator("#job-status")).to_have_text("succeeded", timeout=LIVE)
        expect(page.locator("#stdout")).to_have_text("caught up\n")
    finally:
        context.close()


def test_a_job_that_ends_while_the_socket_reconnects_shows_as_ended(server, browser, job):
    """The socket drops while the job is queued and the server refuses new ones for a while (a
    restart); the job ends meanwhile. The job page and the job list both show it ended once the
    socket is back, without a reload."""
    from playwright.sync_api import expect

    technician, w, queued = job
    context = browser.new_context(base_url=server.url)
    up, sockets = [True], []

    def socket(ws):  # the path between the browser and the server: through, or refused
        if up[0]:
            ws.connect_to_server()
            sockets.append(ws)
        else:
            ws.close()

    try:
        context.route_web_socket(re.compile(r"/ws/console/$"), socket)
        job_page = context.new_page()
        sign_in_to(job_page, technician, PASSWORD, f"/console/jobs/script/{queued['id']}/")
        list_page = context.new_page()
        list_page.goto(f"/console/jobs/?asset={w['asset']}")
        row_status = list_page.locator(f'#jobs tr:has(a[href*="{queued["id"]}"]) [data-field="status"]')
        expect(row_status).to_have_text("queued")
        pages = (job_page, list_page)
        for page in pages:
            expect(page.locator("#live-state")).to_have_attribute("data-state", "open", timeout=LIVE)
            page.evaluate("window.__noReload = 1")

        up[0] = False
        for ws in sockets:
            ws.close()
        for page in pages:
            expect(page.locator("#live-state")).to_have_attribute("data-state", "reconnecting", timeout=LIVE)
        agent_once(server, w)
        expect(job_page.locator("#job-status")).to_have_text("queued")  # nothing has told it yet
        expect(row_status).to_have_text("queued")

        up[0] = True
        for page in pages:
            expect(page.locator("#live-state")).to_have_attribute("data-state", "open", timeout=LIVE * 3)
        expect(job_page.locator("#job-status")).to_have_text("succeeded", timeout=LIVE)
        expect(job_page.locator("#stdout")).to_have_text("caught up\n")
        expect(row_status).to_have_text("succeeded", timeout=LIVE)
        for page in pages:
            assert page.evaluate("window.__noReload") == 1
    finally:
        context.close()


def test_a_live_reload_neither_undoes_nor_loses_what_the_person_asked_for(server, browser, job):
    """A list reloads itself on job events while its technician sorts it. A reload already in
    flight when they click is not swapped over their answer; one that comes while their request
    is in flight runs once theirs is in. No console error either way."""
    from playwright.sync_api import expect

    technician, w, queued = job
    context = browser.new_context(base_url=server.url)
    held, hold = [], {"live": True, "person": False}

    def network(route):
        """Holds the live reloads (the list's own address, no sort) or the person's re-sort."""
        request = route.request
        htmx = request.headers.get("hx-request") == "true"
        live = htmx and "sort=" not in request.url
        if htmx and ((live and hold["live"]) or (not live and hold["person"] and "sort=-" in request.url)):
            held.append(route)
        else:
            route.continue_()

    def released():
        while held:
            held.pop(0).continue_()

    try:
        page = context.new_page()
        errors = console_errors(page)
        sign_in_to(page, technician, PASSWORD, "/console/")
        page.route(re.compile(r"/console/jobs/\?"), network)
        page.goto(f"/console/jobs/?asset={w['asset']}")
        # On its socket's first open the list, showing a queued job, reloads itself: held.
        expect(page.locator("#live-state")).to_have_attribute("data-state", "open", timeout=LIVE)
        wait_for(lambda: held or page.wait_for_timeout(100), what="the list's reload on open")
        page.evaluate("window.__noReload = 1")

        header = page.locator("#jobs thead th:has(a) a").first
        header.click()  # the person's sort, while the reload is in flight
        page.wait_for_url(re.compile(r"sort="))
        expect(page.locator("#jobs thead th[aria-sort]")).to_have_count(1)
        hold["live"] = False
        released()  # the older reload's answer (no sort) arrives after theirs
        page.wait_for_timeout(500)
        expect(page.locator("#jobs thead th[aria-sort]")).to_have_count(1)
        assert "sort=" in page.url

        hold["person"] = True
        page.locator("#jobs thead th[aria-sort] a").click()  # the other order: held in flight
        wait_for(lambda: held or page.wait_for_timeout(100), what="the person's re-sort in flight")
        newer = run_job(server, w, queued["script"])  # a job event while theirs is in flight
        page.wait_for_timeout(2500)  # the live reload's wait (live.js RELOAD_MS) has passed
        expect(page.locator(f'#jobs tr[data-job-id="{newer["id"]}"]')).to_have_count(0)
        hold["person"] = False
        released()
        expect(page.locator(f'#jobs tr[data-job-id="{newer["id"]}"]')).to_have_count(1, timeout=LIVE)
        assert "sort=-" in page.url
        assert page.evaluate("window.__noReload") == 1
        assert errors == []
    finally:
        context.close()
