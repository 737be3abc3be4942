"""The issue's "Done when" in a browser (Playwright on Debian's chromium): a technician opens a
terminal session on the real local agent under a PSA task, types ``id -u; echo hello`` into the
xterm.js terminal of the session page, sees the answer, ends it; the page then plays the
recording back, and the recording's sha256 is the evidence record's."""

from __future__ import annotations

import hashlib
import re
import uuid

from tests.e2e.flows import console_errors, console_users, make_world, sign_in_to, wait_for
from tests.e2e.test_remote_session import PASSWORD, URL, open_terminal, running_agent  # noqa: F401 - a fixture


def test_a_technician_works_in_the_terminal_ends_it_and_plays_it_back(server, browser, running_agent):  # noqa: F811
    w = make_world(server)
    tech = f"tech-{uuid.uuid4().hex[:6]}"
    console_users(server, {tech: ("technician", [w["site"]])}, PASSWORD)
    token = server.manage("rmm_token", tech, "--role", "technician", "--site", w["site"]).stdout.strip()
    opened, _ = open_terminal(server, w, tech, token, running_agent)
    wait_for(
        lambda: server.request("GET", f"{URL}{opened['id']}/", token=token).json()["status"] == "running",
        timeout=30,
        what="the agent took the session's step",
    )
    context = browser.new_context(base_url=server.url)
    try:
        page = context.new_page()
        errors = console_errors(page)
        sign_in_to(page, tech, PASSWORD, opened["join_url"])
        page.wait_for_selector("[data-field=relay-state]:text('connected')", timeout=15_000)
        page.wait_for_timeout(1000)  # the agent's relay connects
        page.click("#terminal")
        page.keyboard.type("id -u; echo hel''lo\n")
        rows = page.locator("#terminal .xterm-rows")
        wait_for(lambda: re.search(r"\bhello\b", rows.inner_text().replace("hel''lo", "")), timeout=20, what="hello")
        uid = re.search(r"\n(\d+)\n", rows.inner_text())
        assert uid and int(uid.group(1)) != 0
        page.click("#end-session")
        page.wait_for_selector("[data-field=end_reason]:text('user')")

        def sealed():
            shown = server.request("GET", f"{URL}{opened['id']}/", token=token).json()
            return shown if shown["recording_sha256"] else None

        shown = wait_for(sealed, timeout=30, what="the recording is sealed")
        page.reload()
        page.wait_for_selector("#playback .ap-player", timeout=15_000)
        cast = page.request.get(f"/console/sessions/{opened['id']}/recording.cast").body()
        assert hashlib.sha256(cast).hexdigest() == shown["recording_sha256"]
        records = [server.request("GET", f"/api/v1/evidence/{pk}/", token=token).json() for pk in shown["evidence"]]
        assert shown["recording_sha256"] in [r["hash"] for r in records if r["evidence_type"] == "session_recording"]
        assert errors == [], errors
    finally:
        context.close()
