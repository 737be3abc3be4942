"""What the remote-session tests share: a site with an online agent that can relay, staff, and a
PSA task."""

from __future__ import annotations

import pytest

from tests.helpers import approved_authority, make_agent
from tests.sessions.helpers import online


@pytest.fixture
def world(caller, site, other_site, settings):
    settings.RMM_PSA_WEBHOOK_URL = "http://127.0.0.1:9/unused"
    psa = caller("psa", "psa")
    agent, auth = make_agent(site, "term-1")
    online(agent)
    elsewhere, _ = make_agent(other_site, "elsewhere-1")
    online(elsewhere)
    return {
        "site": site,
        "tech": caller("tech", "technician", sites=[site]),
        "other_tech": caller("tech2", "technician", sites=[site]),
        "approver": caller("approver", "approver", sites=[site]),
        "admin": caller("admin", "admin"),
        "psa": psa,
        "agent": agent,
        "auth": auth,
        "asset": agent.asset_id,
        "elsewhere": elsewhere.asset_id,
        "task": approved_authority(site, psa.user),
    }
