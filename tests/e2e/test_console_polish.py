"""In a real browser (Debian's chromium through Playwright): the approval queue's link on /admin/
and the kill banner's link meet WCAG AA contrast; a technician engages a kill switch by finding
the asset with the asset picker, by keyboard (nothing chosen beforehand), and confirming, and sees
it in the history; an approver's queue card says what will run where under which authority."""

import uuid

import pytest

from tests.e2e.flows import console_users, make_world, publish, run_job, sign_in_to
from tests.e2e.test_console_pages import CONTRAST, OVERFLOW, UNLABELLED, check_page

pytestmark = pytest.mark.browser

PASSWORD = "correct horse battery staple"
WAIT = 15_000  # ms

# The contrast of one element's text against the first opaque background behind it.
RATIO = CONTRAST.replace(
    'for (const el of document.body.querySelectorAll("*")) {', "for (const el of [target]) {"
).replace("() => {", "(target) => {", 1)


def test_kill_switch_picked_confirmed_and_its_banner_readable(server, browser):
    from playwright.sync_api import expect

    site = f"site-{uuid.uuid4().hex[:6]}"
    technician = f"tech-kill-{uuid.uuid4().hex[:6]}"
    w = make_world(server, site)
    console_users(server, {technician: ("technician", [site])}, PASSWORD)
    context = browser.new_context(base_url=server.url)
    errors: list[str] = []
    try:
        page = context.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        sign_in_to(page, technician, PASSWORD, "/console/kill-switches/")
        # Nothing is chosen beforehand; the asset picker offers the technician's asset.
        expect(page.locator("input[name=scope]:checked")).to_have_count(0)
        expect(page.locator("input[name=asset]:checked")).to_have_count(0)
        check_page(page, errors)

        # Submitting without a scope: the error beside the field, in plain words.
        page.fill("#id_reason", "browser test")
        page.click("#engage-form button[type=submit]")
        expect(page.locator("#id_scope_error")).to_have_text("Choose what to stop: a site, an asset or everything.")
        errors.clear()  # the browser logs the 400 itself
        check_page(page, errors)

        # The asset found by a hostname prefix in capitals, matched on the server as it is typed,
        # and chosen from the search box with the down arrow.
        page.check("input[name=scope][value=asset]")
        page.fill("#id_asset_q", w["hostname"][:6].upper())
        match = page.locator("#id_asset_matches .picker-option", has_text=w["hostname"])
        expect(match).to_contain_text(site)
        expect(page.locator("#id_asset_matches .picker-option")).to_have_count(1)
        page.press("#id_asset_q", "ArrowDown")
        expect(match.locator("input[name=asset]")).to_be_checked()
        expect(match.locator("input[name=asset]")).to_be_focused()
        check_page(page, errors)
        page.click("#engage-form button[type=submit]")
        expect(page.locator("h1")).to_have_text(f"Engage the kill switch on asset {w['hostname']} ({site})?")
        check_page(page, errors)
        page.click("#confirm-form button[name=confirm]")
        page.wait_for_url("**/console/kill-switches/")

        banner = page.locator(".banner-kill", has_text=w["hostname"])
        expect(banner).to_be_visible()
        link = banner.locator("a", has_text="Manage")
        assert link.evaluate(RATIO) == []  # the banner's link at AA (it measured 1.28:1)
        expect(page.locator("#kill-switch-history tbody tr").first).to_contain_text(technician)
        check_page(page, errors)
    finally:
        context.close()


def test_the_admin_link_to_the_approval_queue_is_readable_and_cards_say_what_runs(server, browser):
    from playwright.sync_api import expect

    approver = f"approver-queue-{uuid.uuid4().hex[:6]}"
    console_users(server, {approver: ("approver", [])}, PASSWORD)
    w = make_world(server)
    script = publish(server, w, "echo queued\n", requires_approval=True)
    job = run_job(server, w, script["id"])
    assert job["status"] == "awaiting_approval", job
    context = browser.new_context(base_url=server.url)
    try:
        page = context.new_page()
        sign_in_to(page, approver, PASSWORD, "/admin/", second_factor=True)

        link = page.locator("#content a", has_text="Approval queue")
        expect(link).to_be_visible()
        assert link.evaluate(RATIO) == []  # it measured 1.03:1
        assert page.evaluate(CONTRAST) == []  # the whole page at AA
        expect(page.locator("body")).not_to_contain_text("Kill switchs")
        expect(page.locator("body")).to_contain_text("Kill switches")

        page.goto("/admin/approvals/")
        card = page.locator(f'.queue-item[data-kind="script"][data-id="{job["id"]}"]')
        for text in (script["name"], script["sha256"], w["hostname"], "CVE fix", "Run the fix"):
            expect(card).to_contain_text(text)
        expect(card.locator("button[value=approve]")).to_have_count(1)
        expect(page.locator(".queue-item", has_text="Yours")).to_have_count(0)
        assert page.evaluate(CONTRAST) == []
        assert page.evaluate(UNLABELLED) == []  # the reason to reject has its label
        page.set_viewport_size({"width": 375, "height": 800})  # on a phone the card's sha256 wraps
        assert page.evaluate(OVERFLOW) == []  # it was 532 px wide
    finally:
        context.close()
