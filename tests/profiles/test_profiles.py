"""Profiles through the API: a profile with items, its revisions (items never rewritten), and every
bad item answered 400 naming ``items[i].<field>`` with nothing written."""

import json

import pytest

from profiles import services as profiles
from profiles.models import ConfigurationItem, ConfigurationProfile, ConfigurationProfileRevision
from rmm.history.models import HistoryEvent
from scripting import services as scripting
from tests.support.profiles import approved_key


@pytest.fixture
def people(caller):
    return {"tech": caller("tech", "technician"), "boss": caller("boss", "approver"), "psa": caller("psa", "psa")}


@pytest.fixture
def keys(people):
    tech, boss = people["tech"].user, people["boss"].user
    return {
        "line": approved_key(tech, boss),
        "int": approved_key(tech, boss, name="test.int", value_type="integer", comparisons=("equals", "at_least")),
        "read_only": approved_key(tech, boss, name="test.ro", settable=False),
    }


def item(**overrides):
    return {
        "config_key": "test.line",
        "parameters": {"path": "/etc/ssh/sshd_config", "key": "PermitRootLogin"},
        "desired_value": "no",
        "comparison": "equals",
        "enforcement_mode": "audit",
        **overrides,
    }


def body(*items, name="baseline"):
    return {"name": name, "profile_type": "hardening", "description": "SSH", "items": list(items) or [item()]}


def nothing_written():
    return not (
        ConfigurationProfile.objects.exists()
        or ConfigurationProfileRevision.objects.exists()
        or ConfigurationItem.objects.exists()
        or HistoryEvent.objects.filter(action__startswith="profile.").exists()
    )


def test_a_profile_is_created_with_its_first_revision_and_recorded(people, keys):
    second = item(
        config_key="test.int", parameters={"path": "/p", "key": "k"}, desired_value="2", comparison="at_least"
    )
    r = people["tech"].post("/api/v1/profiles/", body(item(), second), format="json")
    assert r.status_code == 201, r.content
    answer = r.json()
    assert answer["revision"] == 1 and answer["name"] == "baseline" and answer["created_by"] == "tech"
    assert [(i["config_key"], i["config_key_version"], i["comparison"]) for i in answer["items"]] == [
        ("test.line", 1, "equals"),
        ("test.int", 1, "at_least"),
    ]
    assert answer["items"][0]["parameters"] == {"path": "/etc/ssh/sshd_config", "key": "PermitRootLogin"}
    event = HistoryEvent.objects.get(action="profile.created")
    assert event.subject_id == answer["id"] and event.actor == "user:tech"
    assert [i["desired_value"] for i in event.payload["items"]] == ["no", "2"]
    assert people["psa"].get(f"/api/v1/profiles/{answer['id']}/").json() == answer


def test_a_new_revision_copies_nothing_over_and_never_rewrites_the_old_items(people, keys):
    profile = people["tech"].post("/api/v1/profiles/", body(), format="json").json()
    first_items = list(ConfigurationItem.objects.values_list("id", "desired_value", "enforcement_mode"))
    r = people["tech"].post(
        f"/api/v1/profiles/{profile['id']}/revisions/",
        {"items": [item(desired_value="prohibit-password", enforcement_mode="enforce"), item(config_key="test.ro")]},
        format="json",
    )
    assert r.status_code == 201, r.content
    revised = r.json()
    assert revised["id"] == profile["id"] and revised["revision"] == 2
    assert [(i["desired_value"], i["enforcement_mode"]) for i in revised["items"]] == [
        ("prohibit-password", "enforce"),
        ("no", "audit"),
    ]
    old = ConfigurationProfileRevision.objects.get(profile_id=profile["id"], revision=1)
    assert list(old.items.values_list("id", "desired_value", "enforcement_mode")) == first_items
    assert HistoryEvent.objects.get(action="profile.revised").payload["revision"] == 2
    listed = people["boss"].get("/api/v1/profiles/").json()
    assert listed["count"] == 1 and listed["results"][0]["revision"] == 2


def test_lists_are_paginated(people, keys):
    for n in range(3):
        assert people["tech"].post("/api/v1/profiles/", body(name=f"p{n}"), format="json").status_code == 201
    page = people["psa"].get("/api/v1/profiles/", {"limit": 2}).json()
    assert page["count"] == 3 and len(page["results"]) == 2 and page["next"]
    keys_page = people["psa"].get("/api/v1/config-keys/", {"limit": 1}).json()
    assert keys_page["count"] == 3 and len(keys_page["results"]) == 1


BAD_ITEMS = [
    (item(config_key="no.such.key"), "items[0].config_key", "No config key named 'no.such.key'."),
    (item(comparison="at_least", desired_value="3"), "items[0].comparison", "needs an integer key"),
    (
        item(config_key="test.int", parameters={"path": "/p", "key": "k"}, comparison="not_equals", desired_value="1"),
        "items[0].comparison",
        "allows: equals, at_least",
    ),
    (item(comparison="regex", desired_value="(unclosed"), "items[0].desired_value", "Not a regular expression"),
    (
        item(config_key="test.int", parameters={"path": "/p", "key": "k"}, desired_value="many"),
        "items[0].desired_value",
        "holds an integer",
    ),
    (item(config_key="test.ro", enforcement_mode="enforce"), "items[0].enforcement_mode", "has no set script"),
    (item(parameters={"path": "/etc/x"}), "items[0].parameters", "needs the parameter 'key'"),
    (item(parameters={"path": "/p", "key": "k", "mode": "1"}), "items[0].parameters", "no parameter 'mode'"),
    (item(comparison="absent", desired_value="no"), "items[0].desired_value", "leave it empty"),
]


@pytest.mark.parametrize(("bad", "field", "reason"), BAD_ITEMS, ids=[b[1] + ":" + b[2] for b in BAD_ITEMS])
def test_a_bad_item_is_400_naming_it_and_nothing_is_written(people, keys, bad, field, reason):
    r = people["tech"].post("/api/v1/profiles/", body(bad), format="json")
    assert r.status_code == 400, r.content
    assert list(r.json()) == [field] and reason in r.json()[field][0], r.json()
    assert nothing_written()


def test_a_bad_second_item_writes_nothing_and_a_bad_revision_keeps_the_current_one(people, keys):
    r = people["tech"].post("/api/v1/profiles/", body(item(), item(config_key="nope")), format="json")
    assert r.status_code == 400 and list(r.json()) == ["items[1].config_key"]
    assert nothing_written()
    profile = people["tech"].post("/api/v1/profiles/", body(), format="json").json()
    r = people["tech"].post(
        f"/api/v1/profiles/{profile['id']}/revisions/",
        {"items": [item(), item(comparison="regex", desired_value="[")]},
        format="json",
    )
    assert r.status_code == 400 and list(r.json()) == ["items[1].desired_value"]
    assert ConfigurationProfileRevision.objects.count() == 1
    assert people["tech"].get(f"/api/v1/profiles/{profile['id']}/").json()["revision"] == 1


def test_a_key_is_usable_only_when_it_and_its_scripts_are_approved(people, keys):
    tech, boss = people["tech"], people["boss"]
    approved_key(tech.user, boss.user, name="test.pending", approve=False)
    r = tech.post("/api/v1/profiles/", body(item(config_key="test.pending")), format="json")
    assert r.status_code == 400
    assert r.json() == {"items[0].config_key": ["Config key 'test.pending' has no approved version yet."]}
    # A newer version of the line key whose set script is still pending: the approved v1 is used.
    newer = scripting.create_script(tech.user, name="test.line.set", language="sh", content="echo v2\n")
    v2 = approved_key(tech.user, boss.user, name="test.line")
    assert v2.version == 2 and v2.set_script.approval_status == "approved"  # approved_key approves its own
    v3 = profiles.create_config_key(
        tech.user,
        name="test.line",
        platform="linux",
        value_type="string",
        comparisons=["equals"],
        parameters=[{"name": "path"}, {"name": "key"}],
        read_script=v2.read_script,
        set_script=newer,
    )
    boss.post(f"/api/v1/config-keys/{v3.pk}/approve/")
    listed = {k["version"]: k for k in tech.get("/api/v1/config-keys/", {"name": "test.line"}).json()["results"]}
    assert (listed[3]["status"], listed[3]["usable"]) == ("approved", False)
    assert listed[3]["set_script"]["approval_status"] == "pending"
    r = tech.post("/api/v1/profiles/", body(), format="json")
    assert r.status_code == 201 and r.json()["items"][0]["config_key_version"] == 2


def test_only_script_authors_may_write_profiles_and_refusals_are_recorded(people, keys):
    r = people["psa"].post("/api/v1/profiles/", body(), format="json")
    assert r.status_code == 403 and r.json() == {"detail": "Your role may not author scripts."}
    assert HistoryEvent.objects.filter(action="refused.profile.create", actor="user:psa").exists()
    profile = people["tech"].post("/api/v1/profiles/", body(), format="json").json()
    r = people["boss"].post(f"/api/v1/profiles/{profile['id']}/revisions/", {"items": [item()]}, format="json")
    assert r.status_code == 403
    refusal = HistoryEvent.objects.get(action="refused.profile.revise")
    assert refusal.subject_id == profile["id"] and refusal.actor == "user:boss"
    assert ConfigurationProfileRevision.objects.count() == 1


def test_names_are_unique_and_required(people, keys):
    assert people["tech"].post("/api/v1/profiles/", body(), format="json").status_code == 201
    r = people["tech"].post("/api/v1/profiles/", body(), format="json")
    assert r.status_code == 400 and list(r.json()) == ["name"]
    r = people["tech"].post("/api/v1/profiles/", {**body(name="x"), "items": []}, format="json")
    assert r.status_code == 400 and list(r.json()) == ["items"]
    assert ConfigurationProfile.objects.count() == 1


@pytest.mark.parametrize("text", ["\ud800", "a\x00b"], ids=["lone surrogate", "nul"])
def test_text_no_database_can_hold_is_400_naming_the_field(people, keys, text):
    for bad, field in [
        (body(name=text), "name"),
        (body(item(config_key=text)), "items[0].config_key"),
        (body(item(desired_value=text)), "items[0].desired_value"),
        (body(item(parameters={"path": text, "key": "k"})), "items[0].parameters.path"),
    ]:
        r = people["tech"].generic("POST", "/api/v1/profiles/", json.dumps(bad), content_type="application/json")
        assert r.status_code == 400, (field, r.content)
        assert list(r.json()) == [field], r.json()
    assert nothing_written()


def test_a_malformed_item_is_named_as_the_service_names_fields(people, keys):
    r = people["tech"].post(
        "/api/v1/profiles/",
        body(item(), item(comparison="about", parameters={"path": ["/etc"], "key": "k"})),
        format="json",
    )
    assert r.status_code == 400
    assert set(r.json()) == {"items[1].comparison", "items[1].parameters.path"}, r.json()
    assert nothing_written()


def test_listing_profiles_and_keys_costs_the_same_queries_for_one_or_many(people, keys):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def cost(url):
        with CaptureQueriesContext(connection) as queries:
            assert people["psa"].get(url).status_code == 200
        return len(queries)

    assert people["tech"].post("/api/v1/profiles/", body(name="p0"), format="json").status_code == 201
    people["psa"].get("/api/v1/")  # the token's first use this minute is written down once
    one = cost("/api/v1/profiles/"), cost("/api/v1/config-keys/")
    for n in range(1, 5):
        assert people["tech"].post("/api/v1/profiles/", body(item(), item(), name=f"p{n}"), format="json")
    approved_key(people["tech"].user, people["boss"].user, name="test.more")
    assert (cost("/api/v1/profiles/"), cost("/api/v1/config-keys/")) == one


def test_a_profiles_items_of_its_current_revision_or_of_any_revision(people, keys):
    tech = people["tech"]
    profile = tech.post("/api/v1/profiles/", body(item(), item(desired_value="yes")), format="json").json()
    revised = [item(desired_value="prohibit-password")]
    assert (
        tech.post(f"/api/v1/profiles/{profile['id']}/revisions/", {"items": revised}, format="json").status_code == 201
    )
    url = f"/api/v1/profiles/{profile['id']}/items/"
    current = people["psa"].get(url).json()  # every role reads profiles
    assert current["count"] == 1
    [row] = current["results"]
    assert row == {
        "id": row["id"],
        "revision": 2,
        "position": 0,
        "config_key": "test.line",
        "config_key_version": 1,
        "parameters": {"path": "/etc/ssh/sshd_config", "key": "PermitRootLogin"},
        "desired_value": "prohibit-password",
        "comparison": "equals",
        "enforcement_mode": "audit",
    }
    first = people["psa"].get(url, {"revision": 1, "limit": 1}).json()
    assert first["count"] == 2 and first["next"] and [r["desired_value"] for r in first["results"]] == ["no"]
    assert [r["position"] for r in people["psa"].get(url, {"revision": 1}).json()["results"]] == [0, 1]
    # a revision it does not have, or that is no number: 400 naming it; another profile: 404
    for value in ("3", "0", "x"):
        r = people["psa"].get(url, {"revision": value})
        assert r.status_code == 400 and list(r.json()) == ["revision"], r.content
    assert people["psa"].get("/api/v1/profiles/00000000-0000-0000-0000-000000000000/items/").status_code == 404
