"""Facts by namespace (issue 14, part 4): each namespace with its own hash, its body only when it
changed, handed to the handler that registered it; a full resend at the server's request; 400
naming the field for what cannot be used; an agent that sends one blob (protocol v1) still served."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from rmm.history.models import HistoryEvent
from rmm.inventory import namespaces
from rmm.inventory import services as inventory
from rmm.inventory.models import Agent, AssetFacts
from rmm_agent.protocol import MAX_FACTS_BYTES, MAX_NAMESPACE_BYTES, MAX_NAMESPACES, facts_hash
from tests.helpers import make_agent

HEARTBEAT = "/api/v1/agent/heartbeat/"
BODIES = {
    "os": {"os": "Linux", "os_version": "Debian 13", "kernel": "6.12.0", "boot_time": "2026-12-01T00:00:00Z"},
    "hardware": {"architecture": "aarch64", "cpu_count": 8},
    "network": {"hostname": "web-01.example", "addresses": ["10.0.0.5", "2001:db8::5"]},
    "agent": {"agent_version": "0.2.0"},
}


def report(bodies: dict, sent: set | None = None) -> dict:
    """A heartbeat's ``namespaces``: every hash, the bodies of ``sent`` (all by default)."""
    sent = set(bodies) if sent is None else sent
    return {
        name: {"hash": facts_hash(body), **({"body": body} if name in sent else {})} for name, body in bodies.items()
    }


def beat(auth: str, body: dict, status: int = 200) -> dict:
    answer = Client().post(HEARTBEAT, data=json.dumps(body), content_type="application/json", HTTP_AUTHORIZATION=auth)
    assert answer.status_code == status, answer.content
    return answer.json()


@pytest.fixture
def agent(site, settings):
    settings.RMM_HEARTBEAT_MIN_SPACING_SECONDS = 0
    return make_agent(site, "enrolled-name")


@pytest.fixture
def probe():
    """A namespace of a test's own, registered as a domain app would register one."""
    handled = []

    def validate(body: dict) -> dict:
        if not isinstance(body.get("level"), int):
            raise ValueError("level must be an integer")
        return body

    def handle(body: dict) -> dict:
        handled.append(body)
        return {"probe_level": body["level"]}

    namespaces.register("test_probe", validate, handle)
    yield handled
    namespaces.unregister("test_probe")


def test_the_inventory_registers_the_agent_s_built_in_namespaces():
    assert all(namespaces.get(name) for name in ("os", "hardware", "network", "agent"))
    with pytest.raises(ValueError, match="registered already"):
        namespaces.register("os", dict, dict)
    with pytest.raises(ValueError, match="not a namespace name"):
        namespaces.register("Not-A-Name", dict, dict)


def test_namespaces_are_stored_and_keep_the_asset_s_fields_and_summary(agent, site):
    row, auth = agent
    answer = beat(auth, {"namespaces": report(BODIES)})
    assert answer["facts_wanted"] == [] and answer["facts_required"] is False
    stored = AssetFacts.objects.get(asset_id=row.asset_id)
    assert stored.namespaces == BODIES
    assert stored.namespace_hashes == {name: facts_hash(body) for name, body in BODIES.items()}
    row.asset.refresh_from_db()
    assert (row.asset.hostname, row.asset.os, row.asset.architecture) == ("web-01.example", "Linux", "aarch64")
    assert stored.facts["addresses"] == ["10.0.0.5", "2001:db8::5"] and stored.facts["kernel"] == "6.12.0"


def test_only_a_changed_namespace_is_stored_and_handed_to_its_handler(agent, probe):
    row, auth = agent
    bodies = {**BODIES, "test_probe": {"level": 1}}
    beat(auth, {"namespaces": report(bodies)})
    assert probe == [{"level": 1}]
    beat(auth, {"namespaces": report(bodies, sent=set())})  # nothing changed: hashes only
    changed = {**bodies, "test_probe": {"level": 2}}
    before = AssetFacts.objects.get(asset_id=row.asset_id).namespaces
    answer = beat(auth, {"namespaces": report(changed, sent={"test_probe"})})
    assert answer["facts_wanted"] == []
    assert probe == [{"level": 1}, {"level": 2}]
    stored = AssetFacts.objects.get(asset_id=row.asset_id)
    assert stored.namespaces == {**before, "test_probe": {"level": 2}}
    assert stored.facts["probe_level"] == 2 and stored.facts["hostname"] == "web-01.example"


def test_the_server_asks_for_a_namespace_in_full_when_it_lacks_its_hash(agent):
    row, auth = agent
    beat(auth, {"namespaces": report(BODIES)})
    # The server lost what it had of three namespaces (a restore from an older backup, say).
    stored = AssetFacts.objects.get(asset_id=row.asset_id)
    stored.namespace_hashes = {"os": "0" * 64, "hardware": stored.namespace_hashes["hardware"], "agent": "1" * 64}
    stored.save()
    answer = beat(auth, {"namespaces": report(BODIES, sent=set())})
    assert answer["facts_wanted"] == ["agent", "network", "os"]
    answer = beat(auth, {"namespaces": report(BODIES, sent={"agent", "network", "os"})})
    assert answer["facts_wanted"] == []
    assert beat(auth, {"namespaces": report(BODIES, sent=set())})["facts_wanted"] == []


def test_a_namespace_no_app_registered_is_neither_stored_nor_asked_for(agent):
    row, auth = agent
    answer = beat(auth, {"namespaces": report({**BODIES, "unknown_ns": {"x": 1}}, sent={"unknown_ns"})})
    assert answer["facts_wanted"] == ["agent", "hardware", "network", "os"]  # never sent yet
    assert "unknown_ns" not in AssetFacts.objects.get(asset_id=row.asset_id).namespaces


def test_a_patch_is_applied_to_the_stored_body(agent):
    row, auth = agent
    beat(auth, {"namespaces": report(BODIES)})
    renamed = {**BODIES["network"], "hostname": "renamed", "addresses": ["10.0.0.6"]}
    patch = {"hostname": "renamed", "addresses": ["10.0.0.6"]}
    namespaces_ = report({**BODIES, "network": renamed}, sent=set())
    namespaces_["network"]["patch"] = patch
    assert beat(auth, {"namespaces": namespaces_})["facts_wanted"] == []
    stored = AssetFacts.objects.get(asset_id=row.asset_id)
    assert stored.namespaces["network"] == renamed and stored.namespace_hashes["network"] == facts_hash(renamed)
    row.asset.refresh_from_db()
    assert row.asset.hostname == "renamed" and stored.facts["addresses"] == ["10.0.0.6"]


@pytest.mark.parametrize("case", ["no-base", "wrong-hash", "validator-refuses"])
def test_a_patch_that_does_not_give_its_hash_s_body_is_answered_with_a_request_for_the_body(agent, case):
    row, auth = agent
    if case != "no-base":
        beat(auth, {"namespaces": report(BODIES)})
    before = AssetFacts.objects.get(asset_id=row.asset_id)
    patch = {"hostname": "renamed"} if case != "validator-refuses" else {"hostname": None}
    target = (
        {**BODIES["network"], "hostname": "renamed"}
        if case != "validator-refuses"
        else {"addresses": BODIES["network"]["addresses"]}
    )
    digest = facts_hash(target) if case != "wrong-hash" else "0" * 64
    others = report(BODIES, sent=set())
    answer = beat(auth, {"namespaces": {**others, "network": {"hash": digest, "patch": patch}}})
    assert "network" in answer["facts_wanted"]
    after = AssetFacts.objects.get(asset_id=row.asset_id)
    assert (after.namespaces, after.namespace_hashes) == (before.namespaces, before.namespace_hashes)


def _big(size: int) -> dict:
    return {"hostname": "h", "addresses": ["x" * 900] * (size // 900)}


BAD = [
    pytest.param([], "namespaces", id="not-an-object"),
    pytest.param({f"n{i}": {"hash": "0" * 64} for i in range(MAX_NAMESPACES + 1)}, "namespaces", id="too-many"),
    pytest.param({"Bad Name": {"hash": "0" * 64}}, "namespaces", id="bad-name"),
    pytest.param({"os": {}}, "namespaces.os.hash", id="no-hash"),
    pytest.param({"os": {"hash": "ABC"}}, "namespaces.os.hash", id="not-a-hash"),
    pytest.param({"os": {"hash": "0" * 64, "body": [1]}}, "namespaces.os.body", id="body-not-an-object"),
    pytest.param({"os": {"hash": "0" * 64, "body": {"os": "Linux"}}}, "namespaces.os.hash", id="hash-mismatch"),
    pytest.param({"os": {"hash": "0" * 64, "body": {"os": "a\x00b"}}}, "namespaces.os.body", id="nul"),
    pytest.param({"os": {"hash": "0" * 64, "body": {}, "patch": {}}}, "namespaces.os", id="body-and-patch"),
    pytest.param({"os": {"hash": "0" * 64, "patch": "x"}}, "namespaces.os.patch", id="patch-not-an-object"),
    pytest.param({"os": {"hash": "0" * 64, "patch": {"k": 1e400}}}, "namespaces.os.patch", id="patch-infinite"),
    pytest.param(report({"network": {"hostname": ""}}), "namespaces.network.body", id="validator-refuses"),
    pytest.param(report({"network": _big(MAX_NAMESPACE_BYTES + 1000)}), "namespaces.network.body", id="too-big"),
    pytest.param(
        report({f"n{i}": _big(MAX_NAMESPACE_BYTES - 1000) for i in range(MAX_FACTS_BYTES // MAX_NAMESPACE_BYTES + 1)}),
        "namespaces",
        id="too-big-together",
    ),
]


@pytest.mark.parametrize(("value", "field"), BAD)
def test_namespaces_that_cannot_be_used_are_a_400_naming_the_field_and_change_nothing(agent, value, field):
    row, auth = agent
    before = AssetFacts.objects.get(asset_id=row.asset_id)
    answer = beat(auth, {"namespaces": value}, status=400)
    assert list(answer) == [field], answer
    after = AssetFacts.objects.get(asset_id=row.asset_id)
    assert (after.facts, after.namespaces, after.namespace_hashes) == (before.facts, {}, {})
    assert Agent.objects.get(pk=row.pk).last_seen_at is None  # not even seen


def test_a_v1_heartbeat_with_one_blob_and_one_hash_is_still_served(agent):
    """An agent from before namespaces: facts as one blob, one hash, ``facts_required``."""
    row, auth = agent
    facts = {"hostname": "v1-host", "os": "Linux", "architecture": "x86_64", "addresses": ["10.1.1.1"]}
    answer = beat(auth, {"agent_version": "0.1.0", "facts_hash": facts_hash(facts), "facts": facts, "capacity": 4})
    assert answer["facts_required"] is False and "facts_wanted" not in answer
    stored = AssetFacts.objects.get(asset_id=row.asset_id)
    assert (stored.facts, stored.facts_hash) == (facts, facts_hash(facts))
    row.asset.refresh_from_db()
    assert row.asset.hostname == "v1-host"
    assert beat(auth, {"facts_hash": facts_hash(facts), "capacity": 4})["facts_required"] is False
    assert beat(auth, {"facts_hash": "0" * 64, "capacity": 4})["facts_required"] is True


def test_namespaces_that_restate_the_enrolled_facts_are_stored_without_a_history_record(site, settings):
    """The first heartbeat after enrollment sends every namespace, which together say what the
    enrollment's facts said: stored (their hashes are known from then on), but the asset's facts
    did not change, so nothing is recorded (at fleet scale, 10,000 such records at once would
    queue every heartbeat behind the history's lock). A change the summary shows is recorded."""
    settings.RMM_HEARTBEAT_MIN_SPACING_SECONDS = 0
    enrolled = {key: value for body in BODIES.values() for key, value in body.items()}
    _, secret = inventory.create_enrollment_token(site)
    row, agent_secret = inventory.enroll_agent(secret, enrolled)
    auth = f"Agent {row.pk}:{agent_secret}"
    reported = HistoryEvent.objects.filter(action="asset.facts_reported", subject_id=str(row.asset_id))
    before = reported.count()

    assert beat(auth, {"namespaces": report(BODIES)})["facts_wanted"] == []
    stored = AssetFacts.objects.get(asset_id=row.asset_id)
    assert stored.namespace_hashes == {name: facts_hash(body) for name, body in BODIES.items()}
    assert reported.count() == before

    moved = dict(BODIES, network={**BODIES["network"], "addresses": ["10.0.0.9"]})
    beat(auth, {"namespaces": report(moved, {"network"})})
    assert reported.count() == before + 1
    assert AssetFacts.objects.get(asset_id=row.asset_id).facts["addresses"] == ["10.0.0.9"]
