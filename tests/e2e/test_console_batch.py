"""A technician watches a batch's progress bar move in a real browser (Debian's chromium through
Playwright) as three real agents run their jobs one after the other, without reloading the page;
its picture with one of three done is the README's (docs/screenshots/batch.png).
"""

import uuid

import pytest

from tests.e2e.flows import SCREENSHOTS, agent_once, console_errors, console_users, make_world, publish, sign_in_to
from tests.e2e.test_console_pages import check_page

pytestmark = pytest.mark.browser

PASSWORD = "correct horse battery staple"
LIVE = 15_000  # ms a live update may take


def test_a_batch_progress_bar_moves_as_its_agents_finish(server, browser):
    from playwright.sync_api import expect

    technician = f"tech-batch-{uuid.uuid4().hex[:6]}"
    w = make_world(server)
    console_users(server, {technician: ("technician", [w["site"]])}, PASSWORD)
    agents = [(w["state"], w["asset"])]
    for _ in range(2):
        hostname = f"e2e-{uuid.uuid4().hex[:6]}"
        state, _config = server.enroll(w["site"], hostname)
        found = server.request("GET", f"/api/v1/assets/?hostname={hostname}", token=w["tech"]).json()["results"]
        agents.append((state, found[0]["id"]))
    script = publish(server, w, "echo batch member\n")
    r = server.request(
        "POST",
        "/api/v1/script-jobs/batch/",
        {"script": script["id"], "assets": [asset for _state, asset in agents], "psa_task_id": w["task"]},
        w["psa"],
    )
    assert r.status == 201, r.body
    batch = r.json()["batch"]

    context = browser.new_context(base_url=server.url)
    try:
        page = context.new_page()
        errors = console_errors(page)
        sign_in_to(page, technician, PASSWORD, f"/console/batches/{batch}/")
        expect(page.locator("#live-state")).to_have_attribute("data-state", "open", timeout=LIVE)
        bar = page.locator("#batch [data-component=batch-progress]").first
        expect(bar.locator("svg")).to_have_attribute("aria-label", "Batch progress: 0 of 3 finished")
        expect(bar.locator('[data-count="succeeded"]')).to_have_text("0 succeeded")
        page.evaluate("window.__noReload = 1")  # a mark on window dies with a reload
        check_page(page, errors)

        for done, (state, _asset) in enumerate(agents, start=1):
            agent_once(server, {"state": state})
            expect(bar.locator('[data-count="succeeded"]')).to_have_text(f"{done} succeeded", timeout=LIVE)
            expect(bar.locator("svg")).to_have_attribute(
                "aria-label", f"Batch progress: {done} of 3 finished", timeout=LIVE
            )
            if done == 1:  # the README's picture of a running batch
                SCREENSHOTS.mkdir(exist_ok=True)
                page.screenshot(path=SCREENSHOTS / "batch.png", full_page=True)
        assert page.evaluate("window.__noReload") == 1
        check_page(page, errors)
    finally:
        context.close()
