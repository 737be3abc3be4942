"""The console's asset page and an asset's retirement: facts by namespace, the agent's version,
protocol and capabilities, its job history a page at a time (constant queries), and retiring it
with a confirmation, after which it is gone from the active list and the job targets."""

from __future__ import annotations

import pytest
from django.test import Client
from django.utils import timezone

from rmm.access import services as access_services
from rmm.history.models import HistoryEvent
from rmm.inventory.models import Agent, Asset, AssetFacts
from tests.console.test_lists import queries, script_jobs
from tests.helpers import otp_login

pytestmark = pytest.mark.django_db


def admin_client(w) -> Client:
    admin = access_services.ensure_user_with_role("site-admin", "admin")
    access_services.grant_site(admin, w["alpha"])
    return otp_login(Client(), admin)


def test_the_asset_page_shows_facts_by_namespace_and_the_agents_protocol_and_capabilities(world):
    agent = world["agents"][0]
    Agent.objects.filter(pk=agent.pk).update(
        last_seen_at=timezone.now(), version="2.2.0", protocol=2, capabilities="artefacts,reboot"
    )
    AssetFacts.objects.update_or_create(
        asset=agent.asset,
        defaults={
            "facts": {"hostname": "alpha-0"},
            "facts_hash": "ab" * 32,
            "namespaces": {
                "os": {"name": "Debian", "version": "13"},
                "network": {"addresses": ["192.0.2.7", "192.0.2.8"], "routes": {"default": "192.0.2.1"}},
            },
            "namespace_hashes": {"os": "cd" * 32, "network": "ef" * 32},
            "reported_at": timezone.now(),
        },
    )
    body = world["client"].get(f"/console/assets/{agent.asset_id}/").content.decode()
    assert '<dd data-field="agent_version">2.2.0</dd>' in body
    assert '<dd data-field="protocol">2</dd>' in body
    assert "<code>artefacts</code>, <code>reboot</code>" in body
    assert '<span class="online">online</span>' in body
    assert "<h3>network</h3>" in body and "<h3>os</h3>" in body and "<h3>Reported</h3>" not in body
    assert "<dd>192.0.2.7, 192.0.2.8</dd>" in body  # a list in words, not a Python list
    assert "<dd>{&quot;default&quot;: &quot;192.0.2.1&quot;}</dd>" in body  # nested: JSON, not a dict repr
    assert "Debian" in body


def test_the_asset_page_pages_its_job_history_with_constant_queries(world):
    agent = world["agents"][0]
    jobs = script_jobs(world, 25, agent)
    script_jobs(world, 2, world["agents"][1])  # another asset's jobs are not its history
    client = world["client"]
    small, response = queries(client, f"/console/assets/{agent.asset_id}/")
    first = response.content.decode()
    assert first.count('data-job-id="') == 20
    assert str(jobs[-1].pk) in first and str(jobs[0].pk) not in first
    assert 'rel="next"' in first
    # The next page, as htmx asks for it: the list alone, the five oldest.
    partial, response = queries(client, f"/console/assets/{agent.asset_id}/?page=2", HTTP_HX_REQUEST="true")
    second = response.content.decode()
    assert second.lstrip().startswith('<div id="list"') and "<html" not in second
    assert {str(job.pk) for job in jobs[:5]} == {str(job.pk) for job in jobs if f'data-job-id="{job.pk}"' in second}
    assert partial < small
    script_jobs(world, 30, agent)
    large, _ = queries(client, f"/console/assets/{agent.asset_id}/")
    assert large == small


def test_an_admin_retires_an_asset_from_its_page_after_a_confirmation(world):
    agent = world["agents"][0]
    client = admin_client(world)
    page = client.get(f"/console/assets/{agent.asset_id}/").content.decode()
    assert f'href="/console/assets/{agent.asset_id}/retire/"' in page
    confirm = client.get(f"/console/assets/{agent.asset_id}/retire/").content.decode()
    assert 'name="csrfmiddlewaretoken"' in confirm and 'name="confirm"' in confirm and 'name="reason"' in confirm
    assert "revokes its agent" in confirm

    unconfirmed = client.post(f"/console/assets/{agent.asset_id}/retire/", {"reason": "sold"})
    assert unconfirmed.status_code == 400 and "Tick the box to confirm." in unconfirmed.content.decode()
    assert Asset.objects.get(pk=agent.asset_id).retired_at is None

    done = client.post(f"/console/assets/{agent.asset_id}/retire/", {"reason": "sold", "confirm": "on"}, follow=True)
    body = done.content.decode()
    assert done.redirect_chain[-1][0] == f"/console/assets/{agent.asset_id}/"
    assert "alpha-0 retired: its agent is revoked." in body
    assert 'id="retired"' in body and "sold" in body and '<span class="offline">retired</span>' in body
    assert f"/{agent.asset_id}/retire/" not in body and "/console/scripts/run/?asset=" not in body  # nothing to start
    assert Agent.objects.get(pk=agent.pk).revoked_at is not None
    assert HistoryEvent.objects.filter(action="asset.retired", subject_id=str(agent.asset_id)).exists()

    again = client.post(f"/console/assets/{agent.asset_id}/retire/", {"reason": "sold", "confirm": "on"})
    assert again.status_code == 409 and "This asset is already retired." in again.content.decode()


def test_a_technician_may_not_retire_and_its_refusal_is_recorded(world):
    agent = world["agents"][0]
    client = world["client"]
    assert f"/{agent.asset_id}/retire/" not in client.get(f"/console/assets/{agent.asset_id}/").content.decode()
    assert "Only an admin" in client.get(f"/console/assets/{agent.asset_id}/retire/").content.decode()
    refused = client.post(f"/console/assets/{agent.asset_id}/retire/", {"reason": "mine now", "confirm": "on"})
    assert refused.status_code == 403 and "Your role may not retire assets." in refused.content.decode()
    assert HistoryEvent.objects.filter(action="refused.asset.retire", subject_id=str(agent.asset_id)).exists()
    assert Asset.objects.get(pk=agent.asset_id).retired_at is None
    other = client.post(f"/console/assets/{world['other'].asset_id}/retire/", {"reason": "x", "confirm": "on"})
    assert other.status_code == 404


def test_a_retired_asset_leaves_the_active_list_and_the_job_targets(world):
    retired, kept = world["agents"][:2]
    admin_client(world).post(f"/console/assets/{retired.asset_id}/retire/", {"reason": "sold", "confirm": "on"})
    client = world["client"]

    def listed(path: str) -> set[str]:
        body = client.get(path).content.decode()
        return {str(a.asset_id) for a in world["agents"] if f'data-asset-id="{a.asset_id}"' in body}

    assert str(retired.asset_id) not in listed("/console/assets/") and str(kept.asset_id) in listed("/console/assets/")
    assert listed("/console/assets/?retired=yes") == {str(retired.asset_id)}
    assert client.get(f"/console/assets/{retired.asset_id}/").status_code == 200  # its page, history and evidence stay
    run = client.get("/console/scripts/run/").content.decode()
    assert f'value="{kept.asset_id}"' in run and f'value="{retired.asset_id}"' not in run
