"""A technician pages through jobs, filters them, opens a batch and an asset page in a real browser
(Debian's chromium through Playwright); on every page there is no console error, every input has
a label, and every text meets WCAG AA contrast (measured in the page with getComputedStyle). An
admin's People pages are swept the same way.
"""

import re
import uuid

import pytest

from tests.e2e.flows import console_errors, console_users, make_world, publish, run_job, sign_in_to

pytestmark = pytest.mark.browser

PASSWORD = "correct horse battery staple"
JOBS = 60  # more than a page (50)
LIVE = 15_000  # ms a live update may take

# Every visible element with text of its own: its colour against the first opaque background
# behind it (text over a transparent element is over its parent's). AA: 4.5:1, 3:1 for large text.
CONTRAST = """() => {
  const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (; el; el = el.parentElement) {
      const c = rgb(getComputedStyle(el).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0.99)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const bad = [];
  for (const el of document.body.querySelectorAll("*")) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || !el.getClientRects().length) continue;
    const style = getComputedStyle(el);
    if (style.visibility === "hidden" || style.display === "none") continue;
    const fg = rgb(style.color).slice(0, 3), bg = background(el);
    const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
    const ratio = (hi + 0.05) / (lo + 0.05);
    const size = parseFloat(style.fontSize), bold = parseInt(style.fontWeight, 10) >= 700;
    const need = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
    if (ratio < need) bad.push(`${el.tagName} "${el.textContent.trim().slice(0, 30)}" ${ratio.toFixed(2)}:1`);
  }
  return bad;
}"""

UNLABELLED = """() => [...document.querySelectorAll("input, select, textarea")]
  .filter((el) => el.type !== "hidden")
  .filter((el) => !(el.labels && el.labels.length))
  .filter((el) => !el.getAttribute("aria-label") && !el.getAttribute("aria-labelledby"))
  .map((el) => el.outerHTML.slice(0, 80))"""


# The page is no wider than the window: what sticks out (outside an element that scrolls sideways
# itself, such as a table's container) is listed.
OVERFLOW = """() => {
  const width = document.documentElement.clientWidth;
  if (document.documentElement.scrollWidth <= width) return [];
  const scrolls = (el) => ["auto", "scroll", "hidden"].includes(getComputedStyle(el).overflowX);
  const inside = (el) => {
    for (el = el.parentElement; el && el !== document.body; el = el.parentElement) if (scrolls(el)) return true;
    return false;
  };
  const out = [...document.body.querySelectorAll("*")]
    .filter((el) => el.getBoundingClientRect().right > width + 1 && !inside(el))
    .map((el) => `${el.tagName}#${el.id}.${el.className} ${Math.round(el.getBoundingClientRect().right)}px`);
  return out.length ? out.slice(0, 8) : [`the page is ${document.documentElement.scrollWidth}px wide in ${width}px`];
}"""

WIDTHS = (1280, 375)  # a desktop's and a phone's


def check_page(page, errors: list[str]) -> None:
    """No console error so far, every input labelled, every text at AA contrast, nothing wider than
    the window."""
    assert errors == [], errors
    assert page.evaluate(UNLABELLED) == []
    assert page.evaluate(CONTRAST) == [], page.url
    assert page.locator('meta[name="viewport"]').count() == 1
    assert page.evaluate(OVERFLOW) == [], f"{page.url} at {page.viewport_size['width']}px"


def sweep(page, paths, errors: list[str]) -> None:
    """Each page at a desktop's and at a phone's width, checked as :func:`check_page` does."""
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 800})
        for path in paths:
            response = page.goto(path)
            assert response.status == 200, path
            check_page(page, errors)
    page.set_viewport_size({"width": WIDTHS[0], "height": 800})


def test_technician_pages_filters_and_opens_an_asset(server, browser):
    from playwright.sync_api import expect

    technician = f"tech-pages-{uuid.uuid4().hex[:6]}"
    recorder = f"psa-pages-{uuid.uuid4().hex[:6]}"
    admin = f"admin-pages-{uuid.uuid4().hex[:6]}"
    site = f"site-{uuid.uuid4().hex[:6]}"
    w = make_world(server, site)  # the site first: the technician is granted it
    console_users(
        server, {technician: ("technician", [site]), recorder: ("psa", [site]), admin: ("admin", [site])}, PASSWORD
    )
    script = publish(server, w, "echo paged\n")
    jobs = [run_job(server, w, script["id"]) for _ in range(JOBS)]
    r = server.request(
        "POST",
        "/api/v1/script-jobs/batch/",
        {"script": script["id"], "assets": [w["asset"]], "psa_task_id": w["task"], "plan": {"canary": 1}},
        w["psa"],
    )
    assert r.status == 201, r.body
    batch = r.json()

    context = browser.new_context(base_url=server.url)
    errors: list[str] = []
    try:
        page = context.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto("/accounts/login/?next=/console/")
        check_page(page, errors)
        page.fill("#id_username", technician)
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url("**/console/")  # the dashboard, the console's home
        page.goto("/console/jobs/")
        expect(page.locator("#live-state")).to_have_attribute("data-state", "open", timeout=LIVE)
        page.evaluate("window.__noReload = 1")

        rows = page.locator("#jobs tbody tr")
        expect(rows).to_have_count(50)
        batch_row = page.locator(f'#jobs tr[data-batch-id="{batch["batch"]}"]')
        expect(batch_row.locator('[data-component="batch-progress"]')).to_be_visible()
        expect(page.locator(f'#jobs tr[data-job-id="{batch["jobs"][0]["id"]}"]')).to_have_count(0)
        check_page(page, errors)

        # The next page, swapped in by htmx: the address follows, the page is not reloaded.
        page.locator("ul.pagination a[rel=next]").click()
        page.wait_for_url(re.compile(r"page=2"))
        expect(rows).to_have_count(JOBS + 1 - 50)
        expect(page.locator(f'#jobs tr[data-job-id="{jobs[0]["id"]}"]')).to_have_count(1)
        check_page(page, errors)

        # A search for one job's id: that row alone.
        page.fill("#id_q", jobs[5]["id"])
        expect(rows).to_have_count(1)
        expect(page.locator(f'#jobs tr[data-job-id="{jobs[5]["id"]}"]')).to_have_count(1)
        page.fill("#id_q", "")
        # A filter on the status lists the jobs inside batches too.
        page.select_option("#id_status", "queued")
        expect(page.locator(f'#jobs tr[data-job-id="{batch["jobs"][0]["id"]}"]')).to_have_count(1, timeout=LIVE)
        page.wait_for_url(re.compile(r"status=queued"))
        check_page(page, errors)

        # The list follows live changes at its own address and filters: a new job shows up.
        new = run_job(server, w, script["id"])
        expect(page.locator(f'#jobs tr[data-job-id="{new["id"]}"]')).to_have_count(1, timeout=LIVE)
        assert page.evaluate("window.__noReload") == 1

        # The batch opens to its jobs; then the asset's page.
        page.goto("/console/jobs/")
        page.locator(f'#jobs tr[data-batch-id="{batch["batch"]}"] a[data-field="open-batch"]').click()
        page.wait_for_url(re.compile(r"batch="))
        expect(page.locator("#batch-head")).to_be_visible()
        expect(rows).to_have_count(1)
        check_page(page, errors)

        page.locator(f'#jobs tbody tr a[href="/console/assets/{w["asset"]}/"]').first.click()
        page.wait_for_url(f"**/console/assets/{w['asset']}/")
        expect(page.locator("h1")).to_have_text(w["hostname"])
        expect(page.locator('#asset [data-field="online"]')).to_contain_text(re.compile("online|offline"))
        expect(page.locator("a", has_text="Run a script here")).to_be_visible()
        check_page(page, errors)
        # Its job history a page at a time, swapped in by htmx.
        asset_rows = page.locator("#jobs tbody tr")
        expect(asset_rows).to_have_count(20)
        page.evaluate("window.__noReload = 1")
        page.locator("ul.pagination a[rel=next]").click()
        page.wait_for_url(re.compile(r"page=2"))
        expect(page.locator("ul.pagination li.active")).to_have_text("2")
        expect(asset_rows).to_have_count(20)
        assert page.evaluate("window.__noReload") == 1
        check_page(page, errors)

        page.goto("/console/assets/")
        expect(page.locator(f'#assets tr[data-asset-id="{w["asset"]}"]')).to_have_count(1)
        check_page(page, errors)

        page.goto(f"/console/batches/{batch['batch']}/")
        expect(page.locator("#batch [data-component=batch-progress]").first).to_be_visible()
        check_page(page, errors)

        # Every console page, on a desktop and on a phone.
        sweep(
            page,
            (
                "/console/",
                "/console/jobs/",
                f"/console/jobs/script/{jobs[0]['id']}/",
                f"/console/batches/{batch['batch']}/",
                "/console/assets/",
                f"/console/assets/{w['asset']}/",
                f"/console/assets/{w['asset']}/retire/",
                "/console/scripts/",
                "/console/scripts/new/",
                f"/console/scripts/{script['id']}/",
                "/console/scripts/run/",
                "/console/authority/cases/",
                f"/console/authority/cases/{w['case']}/",
                "/console/kill-switches/",
                "/console/tokens/",
                "/console/evidence/exports/",
            ),
            errors,
        )

        # The local authority page, as the one who may record it.
        people = browser.new_context(base_url=server.url)
        psa = people.new_page()
        psa.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        psa.on("pageerror", lambda e: errors.append(str(e)))
        sign_in_to(psa, recorder, PASSWORD, "/console/")
        sweep(psa, ("/console/authority/local/",), errors)
        people.close()

        # The People pages, as an admin of the site past its second factor: the list, the
        # technician's page and the confirmation of their deactivation.
        admins = browser.new_context(base_url=server.url)
        boss = admins.new_page()
        boss_errors = console_errors(boss)
        sign_in_to(boss, admin, PASSWORD, "/console/people/", second_factor=True)
        person = boss.locator(f'#people tr[data-username="{technician}"] a').get_attribute("href")
        sweep(boss, ("/console/people/", person, f"{person}deactivate/"), boss_errors)
        boss.goto(person)
        for form in ("#access-form", "#password-form", "#second-factor-form", "#deactivate-link"):
            expect(boss.locator(form)).to_be_visible()
        admins.close()

        response = page.goto(f"/console/assets/{uuid.uuid4()}/")
        assert response.status == 404
        errors.clear()  # the browser logs the 404 itself
        expect(page.locator("h1")).to_have_text("Not found")
        check_page(page, errors)
    finally:
        context.close()
