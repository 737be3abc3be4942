"""The patching tests' world: an agent that returns structured results and can reboot, a PSA
task on its site, a technician and a privileged approver."""

import pytest

from rmm.inventory.models import Agent
from tests.helpers import approved_authority, make_agent
from tests.support.profiles import grant_privileged_approval


@pytest.fixture
def world(caller, site):
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    grant_privileged_approval(boss.user)
    agent, _ = make_agent(site, "patch-1")
    Agent.objects.filter(pk=agent.pk).update(capabilities="structured_result,reboot", protocol=2)
    agent.refresh_from_db()
    task = approved_authority(site, psa.user)
    return {"psa": psa, "tech": tech, "boss": boss, "agent": agent, "task": task, "site": site}
