"""The agent_update kind on the server: release keys given at enrollment, the capability the
heartbeat stores, jobs only for agents that report it, the signed order, the release download."""

from __future__ import annotations

import json
from pathlib import Path

from django.test import Client

from rmm.inventory import services as inventory
from rmm.inventory.models import Agent
from rmm.keys import keyset
from rmm.updates import releases
from rmm.updates.models import UpdateJob
from rmm_agent import keyring, release
from tests.helpers import approved_authority, heartbeat, post_json

ARTEFACT = b"a .tar.gz of rmm_agent"


def enroll(site) -> tuple[dict, str]:
    _, token = inventory.create_enrollment_token(site)
    answer = post_json(Client(), "/api/v1/agent/enroll/", {"token": token, "facts": {"hostname": "updatable"}})
    assert answer.status_code == 201, answer.content
    body = answer.json()
    return body, f"Agent {body['agent_id']}:{body['secret']}"


def publish(tmp_path: Path, version: str = "9.9.9") -> dict:
    source = tmp_path / "agent.tar.gz"
    source.write_bytes(ARTEFACT)
    return releases.publish(source, version)


def test_only_an_agent_reporting_self_update_is_sent_a_signed_update(caller, site, tmp_path):
    psa = caller("psa", "psa")
    task = approved_authority(site, psa.user)
    body, auth = enroll(site)
    release_keys = keyring.trusted_keys(body["release_keys"])
    assert set(release_keys) == {k.key_id for k in keyset.current().active(keyset.RELEASES)}
    assert not set(release_keys) & set(body["server_keys"])  # a key set of its own
    publish(tmp_path)
    wanted = {"version": "9.9.9", "asset_id": body["asset_id"], "psa_task_id": str(task.pk)}

    heartbeat(auth)  # a v1 agent says nothing of capabilities
    refused = psa.post("/api/v1/agent-updates/", wanted, format="json")
    assert refused.status_code == 400 and "self_update" in refused.json()["asset"][0]
    assert not UpdateJob.objects.exists()

    heartbeat(auth, capabilities=["self_update", "made-up"])
    assert Agent.objects.get(pk=body["agent_id"]).capabilities == "self_update"
    heartbeat(auth)  # saying nothing keeps what it said
    assert Agent.objects.get(pk=body["agent_id"]).capabilities == "self_update"
    created = psa.post("/api/v1/agent-updates/", wanted, format="json")
    assert created.status_code == 201, created.content

    leased = heartbeat(auth, capabilities=["self_update"])["instructions"]
    payload = json.loads(leased[0]["payload"])
    assert payload["interpreter"] == "agent_update"
    order = json.loads(payload["content"])
    signed = release.verify_manifest(order["manifest"], release_keys)
    assert (signed["version"], signed["size"]) == ("9.9.9", len(ARTEFACT))

    assert Client().get(order["url"]).status_code == 401
    download = Client().get(order["url"], HTTP_AUTHORIZATION=auth)
    assert download.status_code == 200 and b"".join(download.streaming_content) == ARTEFACT


def test_an_unpublished_version_is_refused(caller, site):
    psa = caller("psa", "psa")
    task = approved_authority(site, psa.user)
    body, auth = enroll(site)
    heartbeat(auth, capabilities=["self_update"])
    wanted = {"version": "1.2.3", "asset_id": body["asset_id"], "psa_task_id": str(task.pk)}
    refused = psa.post("/api/v1/agent-updates/", wanted, format="json")
    assert refused.status_code == 400 and "No published agent release" in refused.json()["version"][0]
