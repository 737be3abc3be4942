"""Fleet patch compliance (issue 16, part 6): per site and severity, how many scanned assets are
fully patched and how many miss a patch, through the API and the console; an asset's patches on
its page; a patch job's rollout page. The catalog's severities come from the Debian tracker's
import, the patch state from scans the agent reports."""

from __future__ import annotations

import io
import json

import pytest
from django.test import Client

from patching import services, worst
from patching.models import AssetPatchScan
from rmm.inventory.models import Agent
from tests.helpers import make_agent
from tests.patching.scanning import dpkg_document, scan
from tests.patching.test_patch_jobs import UPGRADES, ZZ, approve, request

TRACKER = {
    "zz-rmm-tool": {
        "CVE-2026-0001": {"releases": {"bookworm": {"status": "resolved", "fixed_version": "1.0-2", "urgency": "high"}}}
    },
    "zz-rmm-lib": {
        "CVE-2026-0002": {"releases": {"bookworm": {"status": "resolved", "fixed_version": "2.1-1", "urgency": "low"}}}
    },
}


@pytest.fixture
def fleet(world):
    """alpha: patch-1 misses a high and a low patch, patch-2 is up to date, patch-3 never scanned."""
    services.import_debian_tracker("cli:test", io.BytesIO(json.dumps(TRACKER).encode()), release="bookworm")
    scan(world, dpkg_document(ZZ, UPGRADES))
    agents = {}
    for name in ("patch-2", "patch-3"):
        agent, _ = make_agent(world["site"], name)
        Agent.objects.filter(pk=agent.pk).update(capabilities="structured_result,reboot", protocol=2)
        agent.refresh_from_db()
        agents[name] = agent
    scan(world, dpkg_document(UPGRADES, {}), agent=agents["patch-2"])
    return world | agents


def browser(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_compliance_per_site_and_severity(fleet):
    r = fleet["tech"].get("/api/v1/patch-compliance/")
    assert r.status_code == 200, r.content
    rows = {row["severity"]: row for row in r.json()["results"]}
    assert list(rows) == ["critical", "high", "medium", "low", "none"]
    assert rows["critical"] == {
        "site": "alpha",
        "severity": "critical",
        "assets": 3,
        "scanned": 2,
        "fully_patched": 2,
        "missing": 0,
    }
    assert (rows["high"]["fully_patched"], rows["high"]["missing"]) == (1, 1)
    assert (rows["low"]["fully_patched"], rows["low"]["missing"]) == (1, 1)
    one = fleet["tech"].get("/api/v1/patch-compliance/?site=alpha&severity=high").json()
    assert [(row["severity"], row["missing"]) for row in one["results"]] == [("high", 1)]
    bad = fleet["tech"].get("/api/v1/patch-compliance/?severity=urgent")
    assert bad.status_code == 400 and "severity" in bad.json()
    # a NUL, which PostgreSQL cannot compare, is the caller's mistake, not a server error
    nul = fleet["tech"].get("/api/v1/patch-compliance/?site=%00")
    assert nul.status_code == 400 and "site" in nul.json()


def test_compliance_follows_a_later_import_and_a_later_scan(fleet):
    """Each asset's worst outstanding severity is kept as its patches and the catalog change: an
    import that lowers a severity, then a scan that reports everything installed."""

    def missing() -> dict:
        rows = fleet["tech"].get("/api/v1/patch-compliance/").json()["results"]
        return {row["severity"]: row["missing"] for row in rows}

    assert missing() == {"critical": 0, "high": 1, "medium": 1, "low": 1, "none": 1}
    lowered = json.loads(json.dumps(TRACKER))
    lowered["zz-rmm-tool"]["CVE-2026-0001"]["releases"]["bookworm"]["urgency"] = "low"
    services.import_debian_tracker("cli:test", io.BytesIO(json.dumps(lowered).encode()), release="bookworm")
    assert missing() == {"critical": 0, "high": 0, "medium": 0, "low": 1, "none": 1}
    AssetPatchScan.objects.update(worst_outstanding=None)  # as before the upgrade that added it
    assert worst.refresh() == 2  # what the upgrade runs: every scanned asset's
    assert missing() == {"critical": 0, "high": 0, "medium": 0, "low": 1, "none": 1}
    scan(fleet, dpkg_document(UPGRADES, {}))  # patch-1 upgraded: nothing outstanding anywhere
    assert missing() == {"critical": 0, "high": 0, "medium": 0, "low": 0, "none": 0}


def test_compliance_is_per_site(fleet, caller, other_site):
    outsider = caller("outsider", "technician", sites=[other_site])
    assert outsider.get("/api/v1/patch-compliance/").json()["results"] == []
    assert outsider.get("/api/v1/patch-compliance/?site=alpha").json()["results"] == []


def test_the_compliance_page_shows_each_sites_counts(fleet):
    page = browser(fleet["tech"].user).get("/console/patching/compliance/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "2 of 3 assets scanned." in html
    high = html.split('data-severity="high"')[1].split("</tr>")[0]
    assert '<td data-field="fully_patched">1</td><td data-field="missing">1</td><td>50 %</td>' in high
    critical = html.split('data-severity="critical"')[1].split("</tr>")[0]
    assert '<td data-field="missing">0</td><td>100 %</td>' in critical


def test_the_asset_page_shows_its_outstanding_patches(fleet):
    client = browser(fleet["tech"].user)
    html = client.get(f"/console/assets/{fleet['agent'].asset_id}/").content.decode()
    panel = html.split('id="asset-patches"')[1].split("</table>")[0]
    assert panel.index("zz-rmm-tool") < panel.index("zz-rmm-lib")  # high before low
    assert "<td>1.0-2</td><td>high</td><td>missing</td>" in panel
    assert "2 installed, 2 missing" in html or "2 missing, 2 installed" in html
    patched = client.get(f"/console/assets/{fleet['patch-2'].asset_id}/").content.decode()
    assert "Fully patched, as its last scan reported." in patched
    never = client.get(f"/console/assets/{fleet['patch-3'].asset_id}/").content.decode()
    assert "No scan has reported this asset's patches yet." in never


def test_the_rollout_page_shows_the_request_its_rings_and_each_asset(fleet, caller, other_site):
    made = request(fleet, plan={"canary": 1, "failure_threshold_percent": 0}).json()
    client = browser(fleet["tech"].user)
    html = client.get(f"/console/patching/jobs/{made['id']}/").content.decode()
    assert 'data-field="status">awaiting_approval</span>' in html and "awaiting a second person" in html
    assert approve(fleet, made["id"]).status_code == 200
    html = client.get(f"/console/patching/jobs/{made['id']}/").content.decode()
    assert 'data-field="status">running</span>' in html
    assert "Rings released</dt><dd>1 of 1" in html
    assert "patch-1</a>" in html and "zz-rmm-tool=1.0-2" in html
    assert "Decided by</dt><dd>boss" in html
    listed = client.get("/console/patching/compliance/").content.decode()
    assert f"/console/patching/jobs/{made['id']}/" in listed
    outsider = caller("outsider", "technician", sites=[other_site])
    assert browser(outsider.user).get(f"/console/patching/jobs/{made['id']}/").status_code == 404
