"""The console's compliance pages as a person sees them: fleet compliance per profile and site (%
compliant), an asset's items with desired and actual side by side and each item's drift timeline,
and the audits waiting or running; each of the caller's sites only."""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace

import jsonschema
import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from profiles import assignments, audits, compliance, scheduling
from profiles.models import AssetConfigurationProfile, ConfigurationAuditJob
from rmm.access import roles as access
from rmm.authority import services as authority
from rmm.engine import services as engine
from rmm.engine.services import kill_switches
from rmm.history.models import HistoryEvent
from rmm_agent.results import make_result
from tests.helpers import approved_authority, make_agent
from tests.profiles.test_audits import ECHO_READ, assign, document, items_of, profile_of
from tests.support.profiles import approved_key


@pytest.fixture
def w(caller, site, other_site):
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    approved_key(tech.user, boss.user, name="test.echo", read=ECHO_READ, parameters=("value",))
    alpha_agent, _ = make_agent(site, "web-01")
    beta_agent, _ = make_agent(other_site, "db-01")
    w = SimpleNamespace(
        site=site,
        other_site=other_site,
        psa=psa,
        tech=tech,
        boss=boss,
        agent=alpha_agent,
        beta_agent=beta_agent,
        task=approved_authority(site, psa.user),
        beta_task=approved_authority(other_site, psa.user),
    )
    w.profile = profile_of(w, 2, name="ssh-baseline")
    w.alpha = assign(w, w.profile, asset=alpha_agent.asset)
    w.beta = assign(w, w.profile, site=other_site)
    w.beta.psa_task = w.beta_task
    w.beta.save(update_fields=["psa_task"])
    return w


def run_audit(w, assignment, agent, values: dict):
    [job] = audits.request_audit(w.psa.user, assignment.pk)
    [inst] = engine.lease(agent, 4, timezone.now())
    assert (
        engine.ingest_result(agent, make_result(str(inst.pk), "completed", exit_code=0, stdout=document(values)))[0]
        == 201
    )
    return job


def session(caller):
    client = Client()
    client.force_login(caller.user)
    return client


def section(html: str, marker: str) -> str:
    return html[html.index(marker) :]


def test_fleet_compliance_per_profile_and_site_of_the_callers_sites(w, caller):
    first, second = items_of(w.profile)
    run_audit(w, w.alpha, w.agent, {first: (0, b"value-0\n"), second: (0, b"drifted\n")})
    run_audit(w, w.beta, w.beta_agent, {first: (0, b"value-0\n"), second: (0, b"value-1\n")})
    page = session(w.tech).get("/console/compliance/").content.decode()
    table = section(page, 'id="fleet-compliance"').split("</table>")[0]
    rows = table.split("<tr")[2:]
    assert len(rows) == 2
    alpha_row = next(row for row in rows if f'data-site="{w.site.pk}"' in row)
    assert "ssh-baseline" in alpha_row and "alpha" in alpha_row and "50.0 %" in alpha_row
    beta_row = next(row for row in rows if f'data-site="{w.other_site.pk}"' in row)
    assert "100.0 %" in beta_row
    # one site's technician sees that site's row alone
    alpha_only = caller("alpha-tech", "technician", sites=[w.site])
    table = section(session(alpha_only).get("/console/compliance/").content.decode(), 'id="fleet-compliance"')
    assert "50.0 %" in table and "100.0 %" not in table and f'data-site="{w.other_site.pk}"' not in table
    # the site filter, and a site the caller may not see is no choice (400, no rows)
    filtered = session(w.tech).get(f"/console/compliance/?site={w.other_site.pk}").content.decode()
    assert "100.0 %" in filtered and "50.0 %" not in filtered
    refused = session(alpha_only).get(f"/console/compliance/?site={w.other_site.pk}")
    assert refused.status_code == 400 and "100.0 %" not in refused.content.decode()
    # the summary is one query, whatever the fleet
    sites = access.visible_sites(alpha_only.user)
    with CaptureQueriesContext(connection) as seen:
        rows = compliance.summary(sites, profile=w.profile)
    assert len(seen) == 1, [q["sql"] for q in seen.captured_queries]
    assert [(r["site_name"], r["observed"], r["compliant_count"], r["non_compliant_count"]) for r in rows] == [
        ("alpha", 2, 1, 1)
    ]


def test_the_summary_counts_only_assets_a_live_assignment_still_covers(w):
    first, second = items_of(w.profile)
    run_audit(w, w.alpha, w.agent, {first: (0, b"value-0\n"), second: (0, b"drifted\n")})
    run_audit(w, w.beta, w.beta_agent, {first: (0, b"value-0\n"), second: (0, b"value-1\n")})

    def counted() -> dict[str, tuple[int, float]]:
        rows = w.tech.get("/api/v1/compliance-summary/").json()["results"]
        return {row["site"]: (row["observed"], row["percent"]) for row in rows}

    assert counted() == {"alpha": (2, 50.0), "beta": (2, 100.0)}
    # the asset's assignment withdrawn: its old readings are no longer the fleet's compliance
    assignments.withdraw_assignment(w.tech.user, w.alpha)
    assert counted() == {"beta": (2, 100.0)}
    # the profile assigned to the asset's site instead: the asset is covered again
    assign(w, w.profile, site=w.site)
    assert counted() == {"alpha": (2, 50.0), "beta": (2, 100.0)}
    # a site's assignment stopped (its authority went): likewise not counted
    AssetConfigurationProfile.objects.filter(pk=w.beta.pk).update(status="stopped")
    assert counted() == {"alpha": (2, 50.0)}
    AssetConfigurationProfile.objects.filter(pk=w.beta.pk).update(status="awaiting_approval")
    assert counted() == {"alpha": (2, 50.0), "beta": (2, 100.0)}  # audited while it waits: live


def test_the_compliance_summary_api_per_profile_and_site_of_the_callers_sites(w, caller):
    first, second = items_of(w.profile)
    run_audit(w, w.alpha, w.agent, {first: (0, b"value-0\n"), second: (0, b"drifted\n")})
    run_audit(w, w.beta, w.beta_agent, {first: (0, b"value-0\n"), second: (3, b"")})
    url = "/api/v1/compliance-summary/"
    body = w.tech.get(url).json()
    assert body["count"] == 2
    rows = {row["site"]: row for row in body["results"]}
    assert rows["alpha"] == {
        "profile": str(w.profile.pk),
        "profile_name": "ssh-baseline",
        "site": "alpha",
        "observed": 2,
        "compliant": 1,
        "non_compliant": 1,
        "errors": 0,
        "percent": 50.0,
    }
    beta = rows[w.other_site.name]
    assert (beta["compliant"], beta["non_compliant"] + beta["errors"], beta["percent"]) == (1, 1, 50.0)
    assert [r["site"] for r in w.tech.get(url, {"site": "alpha"}).json()["results"]] == ["alpha"]
    assert w.tech.get(url, {"profile": str(w.profile.pk)}).json()["count"] == 2
    assert w.tech.get(url, {"profile": "00000000-0000-0000-0000-000000000000"}).json()["count"] == 0
    # one site's technician: the other site's rows are not there, and its name finds nothing
    alpha_only = caller("alpha-tech", "technician", sites=[w.site])
    assert [r["site"] for r in alpha_only.get(url).json()["results"]] == ["alpha"]
    assert alpha_only.get(url, {"site": w.other_site.name}).json()["count"] == 0
    # bad parameters: 400 naming them
    for params, field in (({"profile": "nope"}, "profile"), ({"site": "\x00"}, "site")):
        r = w.tech.get(url, params)
        assert r.status_code == 400 and field in r.json(), r.content


def test_the_compliance_summary_api_per_asset(w, caller):
    first, second = items_of(w.profile)
    run_audit(w, w.alpha, w.agent, {first: (0, b"value-0\n"), second: (0, b"drifted\n")})
    run_audit(w, w.beta, w.beta_agent, {first: (0, b"value-0\n"), second: (3, b"")})
    url = "/api/v1/compliance-summary/"
    body = w.tech.get(url, {"by": "asset"}).json()
    assert body["count"] == 2
    rows = {row["hostname"]: row for row in body["results"]}
    assert rows["web-01"] == {
        "profile": str(w.profile.pk),
        "profile_name": "ssh-baseline",
        "site": "alpha",
        "asset": str(w.agent.asset_id),
        "hostname": "web-01",
        "observed": 2,
        "compliant": 1,
        "non_compliant": 1,
        "errors": 0,
        "percent": 50.0,
    }
    assert (rows["db-01"]["asset"], rows["db-01"]["site"]) == (str(w.beta_agent.asset_id), "beta")
    # the site and profile filters, pages, and each caller's sites alone
    assert [r["hostname"] for r in w.tech.get(url, {"by": "asset", "site": "beta"}).json()["results"]] == ["db-01"]
    assert w.tech.get(url, {"by": "asset", "profile": str(w.profile.pk)}).json()["count"] == 2
    page = w.tech.get(url, {"by": "asset", "limit": 1}).json()
    assert page["count"] == 2 and len(page["results"]) == 1 and page["next"]
    alpha_only = caller("alpha-tech", "technician", sites=[w.site])
    assert [r["hostname"] for r in alpha_only.get(url, {"by": "asset"}).json()["results"]] == ["web-01"]
    # a withdrawn assignment's asset is no longer counted, as per site
    assignments.withdraw_assignment(w.tech.user, w.alpha)
    assert [r["hostname"] for r in w.tech.get(url, {"by": "asset"}).json()["results"]] == ["db-01"]
    # by=site is the default and its rows are as before; anything else is 400 naming by
    assert "asset" not in w.tech.get(url, {"by": "site"}).json()["results"][0]
    for value in ("profile", "ASSET", "\x00"):
        r = w.tech.get(url, {"by": value})
        assert r.status_code == 400 and list(r.json()) == ["by"], r.content


def test_the_summary_rows_each_answer_exactly_one_of_the_schemas_shapes(w):
    """The operation's rows are a ``oneOf`` of a site's and an asset's: each row must be one."""
    first, second = items_of(w.profile)
    run_audit(w, w.alpha, w.agent, {first: (0, b"value-0\n"), second: (0, b"drifted\n")})
    schema = json.loads(w.tech.get("/api/schema/", {"format": "json"}).content)
    shapes = schema["components"]["schemas"]
    [row] = w.tech.get("/api/v1/compliance-summary/").json()["results"]
    [asset_row] = w.tech.get("/api/v1/compliance-summary/", {"by": "asset"}).json()["results"]
    for answer, shape in ((row, "ComplianceSummarySiteRow"), (asset_row, "ComplianceSummaryAssetRow")):
        matching = [
            ref["$ref"].rsplit("/", 1)[1]
            for ref in shapes["ComplianceSummaryRow"]["oneOf"]
            if jsonschema.Draft4Validator(shapes[ref["$ref"].rsplit("/", 1)[1]]).is_valid(answer)
        ]
        assert matching == [shape]


def test_an_assets_items_desired_beside_actual_with_the_drift_timeline(w, caller):
    first, second = items_of(w.profile)
    url = f"/console/assets/{w.agent.asset_id}/"
    panel = section(session(w.tech).get(url).content.decode(), 'aria-label="Configuration compliance"')
    assert "not read yet" in panel and "equals value-0" in panel
    run_audit(w, w.alpha, w.agent, {first: (0, b"value-0\n"), second: (0, b"drifted\n")})
    run_audit(w, w.alpha, w.agent, {first: (0, b"value-0\n"), second: (0, b"value-1\n")})
    run_audit(w, w.alpha, w.agent, {first: (3, b""), second: (0, b"value-1\n")})
    panel = section(session(w.tech).get(url).content.decode(), 'id="asset-compliance"')
    rows = {row.split('"')[0]: row.split("</tr>")[0] for row in panel.split('data-item="')[1:]}
    one, two = rows[str(first.pk)], rows[str(second.pk)]
    assert "equals value-0" in one and "<em>absent or unread</em>" in one and ">non_compliant<" in one
    assert "unread →" not in one  # compliant at its first reading: no drift then
    assert "equals value-1" in two and ">value-1<" in two and ">compliant<" in two
    timeline = section(two, 'data-field="timeline"')
    assert timeline.index("non_compliant → compliant (value-1)") < timeline.index("unread → non_compliant (drifted)")
    assert section(one, 'data-field="timeline"').count("</li>") == 1 and "compliant → non_compliant" in one
    # another site's technician cannot open the page at all
    beta_only = caller("beta-tech", "technician", sites=[w.other_site])
    assert session(beta_only).get(url).status_code == 404


def test_running_audits_of_the_callers_sites(w, caller):
    [queued] = audits.request_audit(w.psa.user, w.alpha.pk)
    page = session(w.tech).get("/console/compliance/audits/").content.decode()
    table = section(page, 'id="running-audits"')
    assert f'data-job-id="{queued.pk}"' in table and "web-01" in table and "ssh-baseline" in table
    assert f"/console/jobs/profile_audit/{queued.pk}/" in table and ">queued<" in table
    beta_only = caller("beta-tech", "technician", sites=[w.other_site])
    table = section(session(beta_only).get("/console/compliance/audits/").content.decode(), 'id="running-audits"')
    assert str(queued.pk) not in table and "No audit is waiting or running on your sites." in table
    [inst] = engine.lease(w.agent, 4, timezone.now())
    first, second = items_of(w.profile)
    body = make_result(str(inst.pk), "completed", exit_code=0, stdout=document({first: (0, b"x"), second: (0, b"y")}))
    assert engine.ingest_result(w.agent, body)[0] == 201
    table = section(session(w.tech).get("/console/compliance/audits/").content.decode(), 'id="running-audits"')
    assert str(queued.pk) not in table


def rows_of(table: str) -> dict[str, str]:
    """A table's rows by their ``data-assignment``."""
    return {row.split('"')[0]: row.split("</tr>")[0] for row in table.split('data-assignment="')[1:]}


def test_an_assets_panel_shows_every_assignment_with_its_status_and_why_it_stopped(w, caller):
    firewall = profile_of(w, 1, name="firewall")
    closing = approved_authority(w.site, w.psa.user)
    stopping = assignments.create_assignment(
        w.tech.user, profile_id=firewall.pk, site_id=w.site.pk, psa_task_id=closing.pk
    )
    first, second = items_of(w.profile)
    job = run_audit(w, w.alpha, w.agent, {first: (0, b"value-0\n"), second: (0, b"value-1\n")})
    # the site's assignment loses its authority: the minute's sweep stops it, with the reason
    authority.upsert_task(w.psa.user, closing.pk, case_id=closing.case_id, title="done", status="closed")
    assert assignments.stop_unauthorised_assignments() == 1
    url = f"/console/assets/{w.agent.asset_id}/"
    panel = section(session(w.tech).get(url).content.decode(), 'aria-label="Configuration compliance"')
    table = section(panel, 'id="asset-assignments"').split("</table>")[0]
    rows = rows_of(table)
    assert list(rows) == [str(w.alpha.pk), str(stopping.pk)]  # live ones first
    live, stopped = rows[str(w.alpha.pk)], rows[str(stopping.pk)]
    assert "ssh-baseline" in live and "this asset" in live and ">active<" in live
    assert f'href="/console/jobs/profile_audit/{job.pk}/"' in live and "succeeded" in live
    assert f"{scheduling.next_audit_at(w.alpha, w.agent.asset_id):%Y-%m-%d %H:%M}" in live
    assert f'action="/console/compliance/assignments/{w.alpha.pk}/audit/"' in live and "Audit now" in live
    assert "firewall" in stopped and "its site, alpha" in stopped and 'data-status="stopped"' in stopped
    assert '<span class="muted" data-field="reason">authority withdrawn: PSA task is closed, not approved</span>' in (
        stopped
    )
    assert "never" in stopped and "none: its schedule stopped" in stopped and "<form" not in stopped
    # the stopped profile's items are not shown as if they were still measured
    assert str(firewall.current_revision.items.get().pk) not in panel and str(first.pk) in panel
    # a constant number of queries, whatever the items and assignments
    with CaptureQueriesContext(connection) as seen:
        compliance.asset_panel(w.agent.asset, w.tech.user)
    assert len(seen) == 5, [q["sql"] for q in seen.captured_queries]
    # a role that may not ask for audits is offered no button
    watcher = caller("watcher", "compliance", sites=[w.site])
    assert "<form" not in section(session(watcher).get(url).content.decode(), 'id="asset-assignments"')


def test_the_fleet_page_lists_the_sites_assignments_with_status_why_and_audits(w, caller):
    first, second = items_of(w.profile)
    job = run_audit(w, w.beta, w.beta_agent, {first: (0, b"value-0\n"), second: (0, b"value-1\n")})
    assignments.withdraw_assignment(w.tech.user, w.alpha, "moved to another baseline")
    page = session(w.tech).get("/console/compliance/").content.decode()
    rows = rows_of(section(page, 'id="profile-assignments"'))
    assert set(rows) == {str(w.alpha.pk), str(w.beta.pk)}
    alpha, beta = rows[str(w.alpha.pk)], rows[str(w.beta.pk)]
    assert 'data-status="stopped"' in alpha and "web-01" in alpha
    assert '<span class="muted" data-field="reason">withdrawn by tech: moved to another baseline</span>' in alpha
    assert "never" in alpha and "none: its schedule stopped" in alpha and "<form" not in alpha
    assert 'data-status="active"' in beta and "site beta (each of its assets)" in beta
    assert f'href="/console/jobs/profile_audit/{job.pk}/"' in beta and "each asset in its own slot" in beta
    assert f'action="/console/compliance/assignments/{w.beta.pk}/audit/"' in beta and "Audit its site" in beta
    # each caller's sites only, and the page's filters choose them too
    alpha_only = caller("alpha-tech", "technician", sites=[w.site])
    assert set(
        rows_of(section(session(alpha_only).get("/console/compliance/").content.decode(), 'id="profile-assignments"'))
    ) == {str(w.alpha.pk)}
    filtered = session(w.tech).get(f"/console/compliance/?site={w.other_site.pk}").content.decode()
    assert set(rows_of(section(filtered, 'id="profile-assignments"'))) == {str(w.beta.pk)}


def post_audit(client, assignment, **data):
    response = client.post(f"/console/compliance/assignments/{assignment.pk}/audit/", data, follow=True)
    return response.status_code, response.content.decode()


def test_auditing_from_the_console_uses_the_apis_service_and_tells_its_refusals(w, caller):
    url = f"/console/assets/{w.agent.asset_id}/"
    # the panel's own form, with its CSRF token, as a browser posts it
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(w.tech.user)
    form = section(section(browser.get(url).content.decode(), f'data-assignment="{w.alpha.pk}"'), "<form")
    token = form.split('name="csrfmiddlewaretoken" value="')[1].split('"')[0]
    response = browser.post(
        f"/console/compliance/assignments/{w.alpha.pk}/audit/",
        {"csrfmiddlewaretoken": token, "asset": str(w.agent.asset_id)},
    )
    assert (response.status_code, response["Location"]) == (302, url)
    [job] = ConfigurationAuditJob.objects.filter(assignment=w.alpha)
    assert job.requested_by == w.tech.user and job.status == "queued"
    assert "Audit requested: 1 job(s), queued." in browser.get(url).content.decode()
    # from the fleet page, a site's assignment: one job per asset of the site, back to that page
    response = session(w.tech).post(f"/console/compliance/assignments/{w.beta.pk}/audit/")
    assert (response.status_code, response["Location"]) == (302, "/console/compliance/")
    assert ConfigurationAuditJob.objects.filter(assignment=w.beta).count() == 1

    def refused(client, assignment, why: str) -> None:
        before = ConfigurationAuditJob.objects.count()
        status, page = post_audit(client, assignment, asset=str(w.agent.asset_id))
        assert status == 200 and f"Not audited: {why}" in page, page[page.find("messages") :][:400]
        assert ConfigurationAuditJob.objects.count() == before

    # a role that may not request jobs: refused, recorded
    watcher = caller("watcher", "compliance", sites=[w.site])
    refused(session(watcher), w.alpha, "Your role may not request jobs.")
    assert HistoryEvent.objects.filter(action="refused.profile_audit_job.create", actor="user:watcher").exists()
    # a kill switch on the asset
    switch = kill_switches.engage(w.psa.user, scope="asset", target=str(w.agent.asset_id), reason="incident")
    refused(session(w.tech), w.alpha, "A kill switch is engaged on asset web-01: incident")
    kill_switches.release(w.boss.user, switch, "over")
    # no authority: the task closed (before the minute's sweep stops the assignment)
    authority.upsert_task(w.psa.user, w.task.pk, case_id=w.task.case_id, title="done", status="closed")
    refused(session(w.tech), w.alpha, "No authority: ")
    # a stopped assignment
    assignments.stop_unauthorised_assignments()
    refused(session(w.tech), w.alpha, "The assignment is stopped: it is audited no more.")
    # another site's assignment is as missing as one that does not exist; GET does nothing
    beta_only = caller("beta-tech", "technician", sites=[w.other_site])
    assert post_audit(session(beta_only), w.alpha)[0] == 404
    assert session(w.tech).post(f"/console/compliance/assignments/{uuid.uuid4()}/audit/").status_code == 404
    assert session(w.tech).get(f"/console/compliance/assignments/{w.beta.pk}/audit/").status_code == 405
