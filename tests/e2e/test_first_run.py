"""The README's "First job in five minutes", followed in a real browser (Debian's chromium through
Playwright) from a fresh database: ``manage.py rmm_run`` (what ``make run`` starts: server, task
cluster and this machine's agent as real subprocesses), the demo admin with its second factor,
the People page, the local authority page, a technician's script, its approval by the approver
in the queue, a second agent enrolled with the command the "Enroll an agent" page shows, and the
job, finished, with its evidence. The dashboard's first-run guide ticks along and is gone at the
end. The same run writes the README's screenshots of the dashboard and an asset page
(docs/screenshots/)."""

import hashlib
import json
import re
import shlex
import socket
import uuid

import pytest

from tests.e2e.flows import SCREENSHOTS, choose_asset, sign_in_to, wait_for
from tests.e2e.server import Server
from tests.e2e.test_console_pages import check_page

pytestmark = pytest.mark.browser

VIEWPORT = {"width": 1280, "height": 900}
PASSWORD = "correct horse battery staple"
LIVE = 60_000  # ms: the job, from the run form to succeeded, leased by make run's own agent


@pytest.fixture(scope="module")
def product(tmp_path_factory):
    """A fresh database and ``rmm_run``, as ``make run`` on a new machine."""
    server = Server(tmp_path_factory.mktemp("first-run")).start(product=True)
    yield server
    server.stop()
    wait_for(lambda: not server.leftovers(), timeout=5, what="rmm_run's processes gone")


def demo_admin(server) -> tuple[str, str]:
    """The login ``rmm_run`` printed, from the file it keeps it in."""
    path = server.tmp / "var" / "demo_admin.json"
    data = wait_for(lambda: path.exists() and json.loads(path.read_text()), what="the demo admin")
    return data["username"], data["password"]


def sign_in(browser, server, username: str, password: str, errors: list[str], *, second_factor: bool = False):
    """A person's own browser: the sign-in form, and for an admin or approver the set-up of its
    second factor (the code its authenticator app would show for the secret on the page)."""
    context = browser.new_context(base_url=server.url, viewport=VIEWPORT)
    page = context.new_page()
    page.on("console", lambda m: errors.append(f"{m.text} ({m.location['url']})") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    sign_in_to(page, username, password, "/console/", second_factor=second_factor)
    return context, page


def guide_step(page, step: str):
    return page.locator(f'#first-run li[data-step="{step}"]')


def test_the_readme_walk_through_reaches_a_finished_job_in_the_browser(product, browser):
    from playwright.sync_api import expect

    errors: list[str] = []
    suffix = uuid.uuid4().hex[:6]
    script_name, case_title, task_title = f"hello-{suffix}", "First run", "Say hello"
    config = product.tmp / "var" / "agent" / "config.json"
    wait_for(config.exists, timeout=60, what="make run's own agent enrolled")
    hostname = socket.gethostname()  # what make run's agent reports, and what the script prints

    # 2. The demo admin signs in and sets up its second factor; the guide is on the dashboard.
    admin_ctx, page = sign_in(browser, product, *demo_admin(product), errors, second_factor=True)
    expect(page.locator("#first-run h2")).to_have_text("First job in five minutes")
    for step in ("people", "authority", "script", "approval", "job"):
        expect(guide_step(page, step)).to_have_attribute("data-done", "no")
    expect(guide_step(page, "agent")).to_have_attribute("data-done", "yes")  # make run's agent
    check_page(page, errors)

    # 3. People: a technician and an approver, with passwords.
    guide_step(page, "people").locator("a").click()
    expect(page.locator("h1")).to_have_text("People")
    check_page(page, errors)
    for username, role in (("tech", "technician"), ("approver", "approver")):
        page.fill("#id_username", username)
        page.fill("#id_password", PASSWORD)
        page.check(f'input[name="role"][value="{role}"]')
        page.select_option("#id_site", "*")
        page.click("#person-form button[type=submit]")
        expect(page.locator(".messages .success")).to_have_text(f"{username} added as {role}.")
        expect(page.locator(f'#people tr[data-username="{username}"] [data-field="roles"]')).to_have_text(role)
    check_page(page, errors)

    # 4. A case and task on the local authority page.
    page.goto("/console/")
    expect(guide_step(page, "people")).to_have_attribute("data-done", "yes")
    guide_step(page, "authority").locator("a").click()
    expect(page.locator("h1")).to_have_text("Local authority (no PSA)")
    page.select_option("#id_site", "local")
    page.fill("#id_case_title", case_title)
    page.fill("#id_task_title", task_title)
    page.click("#local-authority-form button[type=submit]")
    expect(page.locator("h1")).to_have_text(case_title)

    # 7. Another agent, enrolled with the command the "Enroll an agent" page shows.
    page.goto("/console/assets/")
    page.click("#enroll-link")
    expect(page.locator("h1")).to_have_text("Enroll an agent")
    check_page(page, errors)
    page.select_option("#id_site", "local")
    page.click("#enroll-form button[type=submit]")
    command = shlex.split(page.locator("#checkout-enroll").inner_text())
    assert command[:4] == [".venv/bin/python", "-m", "rmm_agent", "enroll"], command
    assert command[command.index("--server") + 1] == product.url
    check_page(page, errors)
    second = f"second-{suffix}"
    args = command[3:]
    args[args.index("--state-dir") + 1] = str(product.tmp / "agent-2")  # not the checkout's var/
    done = product.agent([*args, "--hostname", second])
    assert done.returncode == 0, done.stderr
    page.goto(f"/console/assets/?q={second}")
    expect(page.locator("#assets tbody tr")).to_have_count(1)
    expect(page.locator("#assets tbody")).to_contain_text(second)
    admin_ctx.close()

    # 5. The technician writes the script.
    tech_ctx, page = sign_in(browser, product, "tech", PASSWORD, errors)
    expect(guide_step(page, "authority")).to_have_attribute("data-done", "yes")
    guide_step(page, "script").locator("a").click()
    page.fill("#id_name", script_name)
    page.select_option("#id_language", "sh")
    page.fill("#id_content", 'echo "hello from $(hostname)"\n')
    page.click("#script-form button[type=submit]")
    expect(page.locator('[data-field="approval-state"]')).to_have_text("pending approval")

    # 6. The approver, after its own second factor, approves it in the queue.
    approver_ctx, approver = sign_in(browser, product, "approver", PASSWORD, errors, second_factor=True)
    expect(guide_step(approver, "script")).to_have_attribute("data-done", "yes")
    guide_step(approver, "approval").locator("a").click()
    card = approver.locator(".queue-item", has_text=script_name)
    card.locator('button[value="approve"]').click()
    expect(approver.locator("ul.messagelist")).to_contain_text("Decision recorded.")
    approver_ctx.close()

    # 8. The technician runs it on this machine's asset, and watches it finish.
    page.goto("/console/")
    expect(guide_step(page, "approval")).to_have_attribute("data-done", "yes")
    expect(guide_step(page, "job")).to_have_attribute("data-done", "no")
    guide_step(page, "job").locator("a").click()
    page.select_option("#id_script", label=f"{script_name} v1")
    asset_id = choose_asset(page, hostname)
    page.select_option("#id_psa_task", label=f"{task_title} (approved)")
    page.click("main form button[type=submit]")
    page.wait_for_url(re.compile(r"/console/jobs/script/[0-9a-f-]{36}/"))
    job_id = page.url.rstrip("/").rsplit("/", 1)[1]
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=LIVE)
    expect(page.locator("#exit-code")).to_have_text("0")
    said = f"hello from {hostname}\n"
    expect(page.locator("#stdout")).to_have_text(said.strip())
    check_page(page, errors)

    # Its evidence: the record of the asset's finished instruction, its document naming the job.
    records = page.request.get(f"/api/v1/evidence/?asset={asset_id}").json()["results"]
    blobs = {r["hash"]: page.request.get(f"/api/v1/evidence/{r['id']}/content/").body() for r in records}
    assert all(hashlib.sha256(blob).hexdigest() == digest for digest, blob in blobs.items())  # content-addressed
    (document,) = [d for d in map(json.loads, blobs.values()) if d["job"]["id"] == job_id]
    assert document["job"]["status"] == "succeeded"

    # The guide is gone; the dashboard and the asset page, for the README.
    page.goto("/console/")
    expect(page.locator("h1")).to_have_text("Dashboard")
    expect(page.locator("#first-run")).to_have_count(0)
    page.wait_for_function("() => window.Chart && Chart.getChart('chart-week') !== undefined")
    check_page(page, errors)
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "dashboard.png", full_page=True)
    page.goto(f"/console/assets/{asset_id}/")
    expect(page.locator("h1")).to_have_text(hostname)
    check_page(page, errors)
    page.screenshot(path=SCREENSHOTS / "asset.png", full_page=True)
    tech_ctx.close()
