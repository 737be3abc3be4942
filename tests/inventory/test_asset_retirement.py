"""Retiring an asset: its agent revoked and its work aborted, its history and evidence kept, gone
from the active lists and from job targets (a job for it is refused, and the refusal recorded)."""

import json

import pytest

from evidence.models import RmmEvidence
from rmm.core.errors import Conflict, Forbidden, InvalidInput
from rmm.engine.models import Instruction
from rmm.history.models import HistoryEvent
from rmm.inventory import services as inventory
from rmm.inventory.models import Agent, Asset
from scripting import services as scripting
from scripting.models import ScriptJob
from tests.helpers import approved_authority, approved_script, heartbeat, make_agent, report


@pytest.fixture
def fleet(caller, site):
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    task = approved_authority(site, psa.user)
    script = approved_script(tech.user, boss.user)
    old, auth = make_agent(site, "old-laptop")
    kept, _ = make_agent(site, "kept")
    return {"psa": psa, "task": task, "script": script, "old": old, "auth": auth, "kept": kept}


def run_on(fleet, asset_id):
    return scripting.create_script_job(
        fleet["psa"].user, script_id=fleet["script"].pk, asset_id=asset_id, psa_task_id=fleet["task"].pk
    )


def test_retiring_revokes_the_agent_aborts_its_work_and_keeps_its_history(fleet, caller, settings):
    settings.RMM_MAX_RUNNING_PER_ASSET = 1
    old = fleet["old"]
    done = run_on(fleet, old.asset_id)
    [leased] = heartbeat(fleet["auth"])["instructions"]
    assert report(fleet["auth"], json.loads(leased["payload"])["instruction_id"]).status_code == 201
    queued = run_on(fleet, old.asset_id)
    root = caller("root", "admin").user

    asset = inventory.retire_asset(root, old.asset, "  sold  ")

    assert asset.retired_at is not None and (asset.retired_by, asset.retired_reason) == ("user:root", "sold")
    agent = Agent.objects.get(pk=old.pk)
    assert agent.revoked_at is not None and agent.revoked_reason == "asset retired: sold"
    queued.refresh_from_db()
    assert (queued.status, queued.status_reason) == ("aborted", "asset retired: sold")
    assert Instruction.objects.get(job_id=queued.pk).status == "aborted"
    retired = HistoryEvent.objects.get(action="asset.retired", subject_id=str(old.asset_id))
    assert retired.actor == "user:root"
    assert retired.payload == {"reason": "sold", "hostname": "old-laptop", "agent_revoked": str(old.pk)}
    assert HistoryEvent.objects.filter(action="agent.revoked", subject_id=str(old.pk)).exists()
    # Kept: the job that ran, its history and its evidence.
    assert ScriptJob.objects.get(pk=done.pk).status == "succeeded"
    assert RmmEvidence.objects.filter(related_entity="script_job", related_id=done.pk).exists()
    assert HistoryEvent.objects.filter(action="job.created", subject_id=str(done.pk)).exists()
    assert report(fleet["auth"], "anything").status_code == 401  # its agent can never call again

    with pytest.raises(Conflict, match="already retired"):
        inventory.retire_asset(root, asset, "again")
    assert HistoryEvent.objects.filter(action="asset.retired").count() == 1


def test_an_asset_whose_agent_was_revoked_already_can_be_retired(fleet, caller):
    root = caller("root", "admin").user
    inventory.revoke_agent(root, fleet["old"], "lost")
    inventory.retire_asset(root, fleet["old"].asset, "written off")
    assert HistoryEvent.objects.get(action="asset.retired").payload["agent_revoked"] is None
    assert Agent.objects.get(pk=fleet["old"].pk).revoked_reason == "lost"


def test_only_who_may_manage_the_sites_agents_may_retire_and_a_refusal_is_recorded(fleet, caller, other_site):
    asset = fleet["old"].asset
    for user in (
        caller("t", "technician").user,
        caller("a", "approver").user,
        caller("far", "admin", [other_site]).user,
    ):
        with pytest.raises(Forbidden):
            inventory.retire_asset(user, asset, "no")
    assert HistoryEvent.objects.filter(action="refused.asset.retire", subject_id=str(asset.pk)).count() == 3
    assert Asset.objects.get(pk=asset.pk).retired_at is None
    with pytest.raises(InvalidInput, match="Say why"):
        inventory.retire_asset(caller("root", "admin").user, asset, " ")


def test_a_job_for_a_retired_asset_is_refused_and_the_refusal_recorded(fleet, caller):
    old = fleet["old"]
    inventory.retire_asset(caller("root", "admin").user, old.asset, "sold")
    before = ScriptJob.objects.count()
    with pytest.raises(Conflict, match="The asset is retired"):
        run_on(fleet, old.asset_id)
    with pytest.raises(Conflict, match="1 of the assets are retired"):
        scripting.create_script_jobs(
            fleet["psa"].user,
            script_id=fleet["script"].pk,
            psa_task_id=fleet["task"].pk,
            asset_ids=[fleet["kept"].asset_id, old.asset_id],
        )
    assert ScriptJob.objects.count() == before
    refusals = HistoryEvent.objects.filter(action="refused.script_job.create").order_by("sequence")
    assert [event.payload["reason"] for event in refusals] == ["asset retired", "asset retired"]
    assert refusals[0].payload["assets"] == [str(old.asset_id)]
    # A site's batch is its active assets.
    jobs = scripting.create_script_jobs(
        fleet["psa"].user, script_id=fleet["script"].pk, psa_task_id=fleet["task"].pk, site_name="alpha"
    )
    assert [job.asset_id for job in jobs] == [fleet["kept"].asset_id]


def test_a_retirement_committed_after_the_first_checks_is_seen_under_the_lock(fleet, caller, monkeypatch):
    from rmm.engine.services import creating

    old = fleet["old"]
    recheck = creating._recheck_authority

    def retired_meanwhile(*args, **kwargs):
        Asset.objects.filter(pk=old.asset_id).update(retired_at=old.asset.created_at)
        return recheck(*args, **kwargs)

    monkeypatch.setattr(creating, "_recheck_authority", retired_meanwhile)
    with pytest.raises(Conflict, match="The asset is retired"):
        run_on(fleet, old.asset_id)
    assert not ScriptJob.objects.filter(asset_id=old.asset_id).exists()
    assert HistoryEvent.objects.get(action="refused.script_job.create").payload["reason"] == "asset retired"


def test_the_api_retires_and_lists_active_assets_unless_asked_for_the_retired(fleet, caller):
    root = caller("root", "admin")
    old, kept = fleet["old"], fleet["kept"]
    answer = root.post(f"/api/v1/assets/{old.asset_id}/retire/", {"reason": "sold"}, format="json")
    assert answer.status_code == 200, answer.content
    assert answer.json()["retired_reason"] == "sold" and answer.json()["agent"]["revoked"] is True
    again = root.post(f"/api/v1/assets/{old.asset_id}/retire/", {"reason": "sold"}, format="json")
    assert again.status_code == 409
    missing = root.post(f"/api/v1/assets/{kept.asset_id}/retire/", {}, format="json")
    assert missing.status_code == 400 and "reason" in missing.json()

    def listed(query: str = "") -> set[str]:
        return {row["id"] for row in root.get(f"/api/v1/assets/{query}").json()["results"]}

    assert listed() == {str(kept.asset_id)} == listed("?retired=false")
    assert listed("?retired=true") == {str(old.asset_id)}
    assert root.get("/api/v1/assets/?retired=maybe").status_code == 400
    assert root.get(f"/api/v1/assets/{old.asset_id}/").json()["retired_by"] == "user:root"  # still found by id
