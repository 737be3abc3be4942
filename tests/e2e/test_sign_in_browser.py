"""An approver signs in with a second factor in a real browser, then works in the admin, the API
docs and the console under the content security policy: nothing is refused by the policy.

Playwright drives Debian's chromium; every CSP violation the browser reports fails the test.
"""

import uuid

import pytest

from tests.e2e.flows import code_for, console_users, staff

pytestmark = pytest.mark.browser

PASSWORD = "correct horse battery staple"
WAIT = 15_000  # ms


def test_an_approver_sets_up_totp_and_works_in_the_admin_docs_and_console_under_the_csp(server, browser):
    from playwright.sync_api import expect

    approver = f"approver-browser-{uuid.uuid4().hex[:6]}"
    console_users(server, {approver: ("approver", [])}, PASSWORD)
    r = server.request(
        "POST",
        "/api/v1/scripts/",
        {"name": f"csp-{uuid.uuid4().hex[:6]}", "language": "sh", "content": "echo csp\n", "requires_approval": False},
        staff(server)["tech"],
    )
    assert r.status == 201, r.body
    script = r.json()

    context = browser.new_context(base_url=server.url)
    violations: list[str] = []
    try:
        page = context.new_page()
        page.on(
            "console",
            lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None,
        )
        # The password, then the second factor: the admin sends an approver to set one up.
        page.goto("/admin/")
        page.fill("#id_username", approver)
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit], button[type=submit]")
        page.wait_for_url("**/accounts/otp/setup/?next=%2Fadmin%2F")
        expect(page.locator("#otp-qr svg")).to_be_visible()
        secret = page.locator("#otp-secret").inner_text().strip()
        page.fill("#id_code", "000000" if code_for(secret) != "000000" else "111111")
        page.click("main form button[type=submit] >> text=Confirm")
        expect(page.locator(".messages .error")).to_contain_text("Refused: wrong code")
        page.wait_for_timeout(1100)  # django-otp throttles the device for a second after a wrong code
        page.fill("#id_code", code_for(secret))
        page.click("main form button[type=submit] >> text=Confirm")
        page.wait_for_url("**/admin/")

        # The changelist's actions (admin JavaScript) and the reject-reason page.
        page.goto("/admin/scripting/script/")
        row = page.locator(f'input.action-select[value="{script["id"]}"]')
        row.check()
        expect(page.locator(".action-counter")).to_contain_text("1 of")  # actions.js ran
        page.select_option("select[name=action]", "reject")
        page.click("button[name=index]")
        expect(page.locator("textarea#reason")).to_be_visible()
        page.fill("textarea#reason", "checked in the browser test")
        page.click("input[type=submit]")
        expect(page.locator("ul.messagelist")).to_contain_text("Rejected 1 item(s).")

        # The API docs: Swagger UI from the sidecar, its init script a separate file.
        page.goto("/api/docs/")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("RMM execution engine API", timeout=WAIT)
        expect(page.locator(".opblock").first).to_be_visible(timeout=WAIT)

        # The console and its websocket.
        page.goto("/console/")
        expect(page.locator("#live-state")).to_have_attribute("data-state", "open", timeout=WAIT)
    finally:
        context.close()
    assert violations == []
