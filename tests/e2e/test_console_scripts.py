"""Scripts and authority in a real browser (Debian's chromium through Playwright): a technician
writes a script and its next version in the console, sees both pending in the library and the
changed lines in the diff; a person holding the psa role records a case and task on the local
authority page and sees them among the PSA cases. Every page: no console error, labelled inputs,
AA contrast (the checks of test_console_pages.py)."""

import uuid

import pytest

from tests.e2e.flows import console_errors, console_users, make_world, sign_in_to
from tests.e2e.test_console_pages import PASSWORD, check_page

pytestmark = pytest.mark.browser


def test_a_technician_writes_versions_and_a_psa_records_local_authority(server, browser):
    from playwright.sync_api import expect

    suffix = uuid.uuid4().hex[:6]
    technician, psa, site = f"tech-s-{suffix}", f"psa-s-{suffix}", f"site-{suffix}"
    w = make_world(server, site)
    console_users(server, {technician: ("technician", [site]), psa: ("psa", [site])}, PASSWORD)
    name = f"cleanup-{suffix}"

    context = browser.new_context(base_url=server.url)
    try:
        page = context.new_page()
        errors = console_errors(page)
        sign_in_to(page, technician, PASSWORD, "/console/scripts/")
        check_page(page, errors)
        page.click("#new-script")
        page.fill("#id_name", name)
        page.select_option("#id_language", "bash")
        page.fill("#id_content", "echo one\necho <two>\n")
        check_page(page, errors)
        page.click("#script-form button[type=submit]")
        expect(page.locator('[data-field="approval-state"]')).to_have_text("pending approval")
        check_page(page, errors)

        page.click("#new-version")
        expect(page.locator("#id_content")).to_have_value("echo one\necho <two>\n")
        page.fill("#id_content", "echo uno\necho <two>\n")
        page.click("#script-form button[type=submit]")
        expect(page.locator("h1")).to_have_text(f"{name} v2")
        expect(page.locator("#diff .diff-removed")).to_have_text("-echo one")
        expect(page.locator("#diff .diff-added")).to_have_text("+echo uno")
        expect(page.locator("#diff .diff-same")).to_have_text(" echo <two>")
        check_page(page, errors)

        page.goto(f"/console/scripts/?q={name}")
        rows = page.locator("#scripts tbody tr")
        expect(rows).to_have_count(2)
        expect(rows.first).to_contain_text("pending approval")
        page.close()

        page = context.new_page()
        errors = console_errors(page)
        sign_in_to(page, psa, PASSWORD, "/console/authority/cases/")
        expect(page.locator(f'#cases tr[data-case-id="{w["case"]}"]')).to_have_count(1)
        check_page(page, errors)
        page.click("#local-authority")
        expect(page.locator("h1")).to_have_text("Local authority (no PSA)")
        check_page(page, errors)
        page.select_option("#id_site", site)
        page.fill("#id_case_title", "Printers")
        page.fill("#id_task_title", "Clear the spool")
        page.click("#local-authority-form button[type=submit]")
        expect(page.locator("h1")).to_have_text("Printers")
        expect(page.locator("#tasks tbody tr")).to_contain_text("Clear the spool")
        check_page(page, errors)
    finally:
        context.close()
