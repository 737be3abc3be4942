"""An agent says what it can do when it enrolls, not only in its heartbeats: work created for it
before its first heartbeat is signed for what it can do (docs/agent.md, enroll)."""

import json

from django.test import Client

from rmm.history.models import HistoryEvent
from rmm.inventory import services as inventory
from rmm.inventory.models import Agent
from rmm_agent.agent import capabilities_of
from rmm_agent.protocol import CAPABILITY_SELF_UPDATE, PROTOCOL_VERSION
from scripting import services as scripting
from tests.helpers import approved_authority, approved_script, heartbeat, post_json

ENROLL = "/api/v1/agent/enroll/"


def enroll(site, **said):
    _, secret = inventory.create_enrollment_token(site)
    r = post_json(Client(), ENROLL, {"token": secret, "facts": {"hostname": "fresh-host"}, **said})
    assert r.status_code == 201, r.content
    body = r.json()
    return Agent.objects.get(pk=body["agent_id"]), f"Agent {body['agent_id']}:{body['secret']}"


def test_a_fresh_agent_s_first_job_is_offered_live_output(caller, site):
    said = capabilities_of(can_update=False)  # what the real agent sends when it enrolls
    assert CAPABILITY_SELF_UPDATE not in said and "live_output" in said
    agent, auth = enroll(site, capabilities=said, protocol=PROTOCOL_VERSION)
    assert agent.capabilities.split(",") == sorted(said)
    assert agent.protocol == PROTOCOL_VERSION
    event = HistoryEvent.objects.get(action="agent.enrolled", subject_id=str(agent.pk))
    assert (event.payload["protocol"], event.payload["capabilities"]) == (PROTOCOL_VERSION, sorted(said))

    psa = caller("psa", "psa")
    script = approved_script(caller("tech", "technician").user, caller("boss", "approver").user)
    task = approved_authority(site, psa.user)
    scripting.create_script_job(psa.user, script_id=script.pk, asset_id=agent.asset_id, psa_task_id=task.pk)
    envelope = heartbeat(auth, key_ids=[agent.signing_key_id])["instructions"][0]  # its first heartbeat
    assert json.loads(envelope["payload"])["live_output"] is True


def test_what_an_enrollment_cannot_use_counts_as_not_said(site):
    agent, _ = enroll(site, capabilities=["live_output", "root_shell", 7], protocol=99)
    assert (agent.capabilities, agent.protocol) == ("live_output", PROTOCOL_VERSION)  # known names, at most ours
    agent, _ = enroll(site, capabilities="live_output", protocol="2")
    assert (agent.capabilities, agent.protocol) == ("", 1)
    agent, _ = enroll(site)  # an agent from before the fields
    assert (agent.capabilities, agent.protocol) == ("", 1)
