"""EDR containment (issue 19, part 3): the edr role isolates or releases an asset on a PSA task's
authority; the endpoint's state read, judged on the server, sets the asset's ``containment``,
is recorded as ``containment_state`` evidence and tells the outbox. Refusals change nothing and
are in the history."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from containment import kind
from containment.models import ContainmentJob
from evidence.models import RmmEvidence
from evidence.services import read_blob
from rmm.access import services as access_services
from rmm.engine import services as engine
from rmm.history.models import HistoryEvent
from rmm.inventory.models import Agent, Asset, Site
from rmm.outbox.models import Event
from rmm_agent.results import make_result
from tests.helpers import approved_authority, make_agent, otp_login

SERVER = "192.0.2.10:8443"


@pytest.fixture
def world(caller, site, other_site, settings):
    settings.RMM_CONTAINMENT_SERVER = [SERVER]
    settings.RMM_PSA_WEBHOOK_URL = "http://127.0.0.1:9/unused"
    psa, edr = caller("psa", "psa"), caller("edr", "edr", sites=[site])
    agent, _ = make_agent(site, "contain-1")
    Agent.objects.filter(pk=agent.pk).update(capabilities="structured_result", protocol=2)
    agent.refresh_from_db()
    elsewhere, _ = make_agent(other_site, "elsewhere-1")
    return {
        "psa": psa,
        "edr": edr,
        "agent": agent,
        "asset": agent.asset_id,
        "elsewhere": elsewhere.asset_id,
        "task": approved_authority(site, psa.user),
    }


def ask(world, action="isolate", *, who="edr", **extra):
    body = {"asset": str(world["asset"]), "action": action, "reason": "beaconing to a C2 host"}
    body["psa_task_id"] = str(world["task"].pk)
    return world[who].post("/api/v1/containment/", {**body, **extra}, format="json")


def run(world, structured: dict | None, *, exit_code: int = 0):
    """The agent's side, in process: lease the next step and report it."""
    [inst] = engine.lease(world["agent"], 4, timezone.now())
    body = make_result(str(inst.pk), "completed", exit_code=exit_code, stdout="ok\n", structured=structured)
    assert engine.ingest_result(world["agent"], body)[0] == 201
    return inst


def state(contained: bool, expect: str) -> dict:
    return {"contained": contained, "table_present": contained, "nft": True, "expect": expect}


def refusals(action="containment_job.create") -> list[str]:
    return [e.payload["reason"] for e in HistoryEvent.objects.filter(action=f"refused.{action}").order_by("sequence")]


def containment(world) -> str:
    return world["psa"].get(f"/api/v1/assets/{world['asset']}/").json()["containment"]


def test_an_isolate_runs_at_once_is_read_back_as_contained_and_proven_and_a_second_is_the_same_job(
    world, django_capture_on_commit_callbacks
):
    assert containment(world) == "none"
    r = ask(world)
    assert r.status_code == 201, r.content
    body = r.json()
    # time-critical and only narrowing: no approver is waited for
    assert body["status"] == "queued" and body["action"] == "isolate" and body["reason"] == "beaconing to a C2 host"
    assert body["psa_case_id"] == str(world["task"].case_id) and body["server_endpoints"] == [["192.0.2.10", 8443]]
    assert body["dns"] is False and body["containment"] == "none"
    job = ContainmentJob.objects.get(pk=body["id"])
    change, read = kind.render(job)
    assert change.privileged and read.privileged and change.on_failure == "continue"
    assert "table inet rmm_containment\ndelete table inet rmm_containment\ntable inet rmm_containment {" in (
        change.content
    )
    assert "ip daddr 192.0.2.10 tcp dport 8443 ct state new,established accept" in change.content
    assert "dport 53" not in change.content and 'oif "lo" accept' in change.content

    with django_capture_on_commit_callbacks(execute=True):
        run(world, None, exit_code=0)
        run(world, state(True, "contained"))
    job.refresh_from_db()
    assert job.status == "succeeded", job.status_reason
    assert containment(world) == "contained"
    evidence = RmmEvidence.objects.filter(related_entity="containment_job", related_id=job.pk).order_by(
        "history_sequence"
    )
    assert [e.evidence_type for e in evidence] == ["containment_state", "containment_state"]
    document = json.loads(read_blob(evidence[1]))
    assert document["step"] == "state" and document["state"] == "contained"
    assert document["result"]["structured"]["contained"] is True
    told = Event.objects.get(type="containment.changed")
    assert told.data["containment"] == "contained" and told.data["asset"] == str(world["asset"])
    assert told.data["evidence_id"] == str(evidence[1].pk) and told.data["psa_task_id"] == str(world["task"].pk)
    assert HistoryEvent.objects.filter(action="containment.state", payload__state="contained").count() == 1

    again = ask(world)
    assert again.status_code == 200 and again.json()["id"] == str(job.pk)
    assert ContainmentJob.objects.count() == 1  # no second rule set


def test_the_console_shows_the_asset_as_none_contained_then_released_in_those_words(
    world, caller, django_capture_on_commit_callbacks
):
    client = Client()
    client.force_login(world["psa"].user)
    asset_page = f"/console/assets/{world['asset']}/"
    page = client.get(asset_page).content.decode()
    assert '<dd data-field="containment">none</dd>' in page
    assert '<strong id="asset-containment">none</strong>' in page and 'id="asset-containment-jobs"' not in page
    with django_capture_on_commit_callbacks(execute=True):
        ask(world)
        run(world, None)
        run(world, state(True, "contained"))
    page = client.get(asset_page).content.decode()
    assert '<dd data-field="containment">contained</dd>' in page
    assert '<strong id="asset-containment">contained</strong> (reaches only the RMM server)' in page  # the panel
    assert re.search(r"<td>isolate</td><td>edr</td><td>succeeded</td><td>beaconing to a C2 host</td>", page)
    listed = client.get("/console/assets/").content.decode()
    assert '<strong class="contained" data-field="containment">contained</strong>' in listed
    release = ContainmentJob.objects.get(pk=ask(world, "release", reason="host reimaged").json()["id"])
    with django_capture_on_commit_callbacks(execute=True):
        engine.approve_job(release, caller("boss", "approver").user)
        run(world, None)
        run(world, state(False, "released"))
    page = client.get(asset_page).content.decode()
    assert '<dd data-field="containment">released</dd>' in page
    assert '<strong id="asset-containment">released</strong>' in page
    assert re.search(
        r"<td>release</td><td>edr</td><td>succeeded</td><td>host reimaged</td>.*<td>isolate</td>", page, re.S
    )
    listed = client.get("/console/assets/").content.decode()
    assert 'data-field="containment"' not in listed  # only "contained" is called out in the list


def test_the_admin_lists_containment_jobs_of_the_callers_sites_only(world, other_site):
    job = ask(world).json()
    mine, stranger = Client(), Client()
    otp_login(mine, access_services.ensure_user_with_role("alpha-approver", "approver"))
    access_services.grant_site(get_user_model().objects.get(username="alpha-approver"), Site.objects.get(name="alpha"))
    beta = access_services.ensure_user_with_role("beta-approver", "approver")
    access_services.grant_site(beta, other_site)
    otp_login(stranger, beta)
    listed = mine.get("/admin/containment/containmentjob/")
    assert (
        listed.status_code == 200
        and f"/admin/containment/containmentjob/{job['id']}/change/" in listed.content.decode()
    )
    page = mine.get(f"/admin/containment/containmentjob/{job['id']}/change/").content.decode()
    assert "beaconing to a C2 host" in page and 'name="_save"' not in page  # read-only
    assert job["id"] not in stranger.get("/admin/containment/containmentjob/").content.decode()
    assert stranger.get(f"/admin/containment/containmentjob/{job['id']}/change/").status_code == 302  # not found


def test_an_isolate_while_one_is_under_way_answers_with_it(world):
    first = ask(world).json()
    again = ask(world)
    assert again.status_code == 200 and again.json()["id"] == first["id"]


def test_a_release_waits_for_an_approver_by_default_then_reads_back_released(
    world, caller, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        ask(world)
        run(world, None)
        run(world, state(True, "contained"))
    r = ask(world, "release", reason="host reimaged")
    assert r.status_code == 201, r.content
    job = ContainmentJob.objects.get(pk=r.json()["id"])
    assert job.status == "awaiting_approval"
    change, _ = kind.render(job)
    assert "table inet rmm_containment\ndelete table inet rmm_containment\nRMM_NFT" in change.content
    with django_capture_on_commit_callbacks(execute=True):
        engine.approve_job(job, caller("boss", "approver").user)
        run(world, None)
        run(world, state(False, "released"))
    job.refresh_from_db()
    assert job.status == "succeeded" and containment(world) == "released"
    told = Event.objects.filter(type="containment.changed").order_by("created_at")
    assert [e.data["containment"] for e in told] == ["contained", "released"]


def test_a_state_read_that_does_not_show_the_wanted_state_fails_the_job(world, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job = ask(world).json()
        run(world, None, exit_code=3)  # nft missing: the change fails, the read still runs
        run(world, {**state(False, "contained"), "nft": False})
        second = ask(world).json()
        run(world, None)
        run(world, state(False, "contained"))  # the change said done, the read finds no table
    done = ContainmentJob.objects.get(pk=job["id"])
    assert done.status == "failed" and done.status_reason == "step 1 of 2 failed"
    done = ContainmentJob.objects.get(pk=second["id"])
    assert done.status == "failed" and done.status_reason.endswith("state read: not contained")
    assert Asset.objects.get(pk=world["asset"]).containment == "none"
    assert not Event.objects.filter(type="containment.changed").exists()  # nothing changed


def test_state_reads_taken_in_together_set_each_asset(world, site, django_capture_on_commit_callbacks):
    """Results the agent tier's collector takes in at once: each read sets its own asset."""
    agents = [world["agent"]]
    for n in range(2):
        agent, _ = make_agent(site, f"together-{n}")
        Agent.objects.filter(pk=agent.pk).update(capabilities="structured_result", protocol=2)
        agent.refresh_from_db()
        agents.append(agent)
    with django_capture_on_commit_callbacks(execute=True):
        for agent in agents:
            assert ask(world, asset=str(agent.asset_id)).status_code == 201
        for step, structured in ((0, None), (1, state(True, "contained"))):
            leased = [engine.lease(agent, 4, timezone.now())[0] for agent in agents]
            assert {inst.step for inst in leased} == {step}
            reports = [
                (agent, make_result(str(inst.pk), "completed", exit_code=0, stdout="ok\n", structured=structured))
                for agent, inst in zip(agents, leased, strict=True)
            ]
            assert engine.ingest_results(reports) == [(201, {"status": "accepted"})] * 3
    assert set(Asset.objects.filter(pk__in=[a.asset_id for a in agents]).values_list("containment", flat=True)) == {
        "contained"
    }
    assert Event.objects.filter(type="containment.changed").count() == 3
    assert set(ContainmentJob.objects.values_list("status", flat=True)) == {"succeeded"}


def test_release_may_skip_four_eyes_when_the_settings_say_so(world, settings, django_capture_on_commit_callbacks):
    settings.RMM_CONTAINMENT_RELEASE_NEEDS_APPROVAL = False
    with django_capture_on_commit_callbacks(execute=True):
        ask(world)
        run(world, None)
        run(world, state(True, "contained"))
    assert ask(world, "release").json()["status"] == "queued"


def test_a_server_name_keeps_dns_open_and_windows_gets_firewall_rules(world, settings):
    settings.RMM_CONTAINMENT_SERVER = ["localhost:8000"]
    Asset.objects.filter(pk=world["asset"]).update(os="Windows")
    body = ask(world).json()
    assert body["dns"] is True and ["127.0.0.1", 8000] in body["server_endpoints"]
    job = ContainmentJob.objects.get(pk=body["id"])
    change, read = kind.render(job)
    assert change.interpreter == read.interpreter == "powershell"
    assert "Set-NetFirewallProfile -All -DefaultInboundAction Block -DefaultOutboundAction Block" in change.content
    assert "-RemoteAddress @('127.0.0.1'" in change.content and "-RemotePort @('8000')" in change.content
    assert "-RemotePort 53" in change.content and "Disable-NetFirewallRule -Name $rules" in change.content
    assert "RMM_RESULT_PATH" in read.content and "expect = 'contained'" in read.content
    job.action = "release"
    undo, _ = kind.render(job)
    assert "Enable-NetFirewallRule -Name $before.rules" in undo.content and "Remove-NetFirewallRule" in undo.content


# --- refusals ------------------------------------------------------------------------------------


def test_an_asset_outside_the_edrs_sites_is_not_found(world):
    r = ask(world, asset=str(world["elsewhere"]))
    assert r.status_code == 404, r.content
    assert refusals() == ["no such asset in the caller's sites"]
    assert not ContainmentJob.objects.exists()


def test_a_release_without_an_isolation_is_a_conflict(world):
    r = ask(world, "release")
    assert r.status_code == 409, r.content
    assert refusals() == ["The asset is not contained (none): nothing to release"]
    assert not ContainmentJob.objects.exists()


@pytest.mark.parametrize(
    "authority",
    [pytest.param("none", id="none"), pytest.param("expired", id="expired"), pytest.param("unknown", id="unknown")],
)
def test_a_request_without_live_authority_is_refused(world, site, authority):
    if authority == "expired":
        past = timezone.now() - timedelta(hours=1)
        world["task"] = approved_authority(site, world["psa"].user, expires_at=past)
        r = ask(world)
    elif authority == "none":
        r = ask(world, psa_task_id=None)
    else:
        r = ask(world, psa_task_id="00000000-0000-4000-8000-000000000000")
    assert r.status_code == 400 and "psa_task_id" in r.json(), r.content
    assert refusals()[0].startswith("no authority")
    assert not ContainmentJob.objects.exists()


def test_a_role_other_than_edr_may_not_ask(world):
    r = ask(world, who="psa")
    assert r.status_code == 403, r.content
    assert refusals() == ["role may not request containment"]


def test_a_kill_switch_stops_it(world, caller):
    admin = caller("admin", "admin")
    body = {"scope": "asset", "target": str(world["asset"]), "reason": "drill"}
    assert admin.post("/api/v1/kill-switches/", body, format="json").status_code == 201
    r = ask(world)
    assert r.status_code == 403, r.content
    assert refusals() == ["kill switch engaged on asset contain-1"]
    assert not ContainmentJob.objects.exists()


def test_a_reason_is_required(world):
    r = ask(world, reason="   ")
    assert r.status_code == 400 and "reason" in r.json()


def test_without_the_servers_address_nothing_is_created(world, settings):
    settings.RMM_CONTAINMENT_SERVER = []
    r = ask(world)
    assert r.status_code == 409 and "RMM_CONTAINMENT_SERVER" in r.json()["detail"]
    assert refusals() and not ContainmentJob.objects.exists()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None, reason="nft -c needs root and nftables")
def test_the_rendered_rules_are_what_nft_accepts(world, tmp_path, settings):
    settings.RMM_CONTAINMENT_SERVER = ["192.0.2.10:8443", "[2001:db8::1]:8443"]
    job = ContainmentJob.objects.get(pk=ask(world).json()["id"])
    rules = tmp_path / "rules.nft"
    rules.write_text(kind.render_nft(job))
    checked = subprocess.run(["nft", "-c", "-f", str(rules)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
