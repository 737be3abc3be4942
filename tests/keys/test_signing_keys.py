"""The server's signing keys: one per purpose, a key id in every signature, rotation that agents
accept because the old key signs the new one, retirement, and verification that survives both."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command

from evidence import anchors
from evidence import services as evidence
from rmm.engine.models import Instruction
from rmm.history.models import HistoryEvent
from rmm.inventory.models import Agent, Asset
from rmm.keys import keyset, store
from rmm.keys.models import SigningKey
from rmm_agent import keyring
from rmm_agent.protocol import canonical_json, verify_instruction
from scripting import services as scripting
from tests.helpers import approved_authority, approved_script, make_agent, post_json
from tests.support.history import verify


@pytest.fixture
def world(caller, site):
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    return {"psa": psa, "task": approved_authority(site, psa.user), "script": approved_script(tech.user, boss.user)}


def queue(world, agent) -> Instruction:
    job = scripting.create_script_job(
        world["psa"].user, script_id=world["script"].pk, asset_id=agent.asset_id, psa_task_id=world["task"].pk
    )
    return Instruction.objects.get(job_id=job.pk)


def heartbeat(client, auth, key_ids) -> dict:
    r = post_json(client, "/api/v1/agent/heartbeat/", {"capacity": 0, "key_ids": key_ids}, HTTP_AUTHORIZATION=auth)
    assert r.status_code == 200, r.content
    return r.json()


def rotate(purpose: str) -> str:
    out = io.StringIO()
    call_command("rmm_signing_key", "rotate", "--purpose", purpose, stdout=out)
    return out.getvalue().split("key id ")[1].split(",")[0]


def test_each_purpose_has_its_own_key_and_every_signature_names_it(world, site, client, events):
    agent, auth = make_agent(site, "named")
    keys = keyset.current()
    instructions_key = keys.signer(keyset.INSTRUCTIONS)
    evidence_key = keys.signer(keyset.EVIDENCE)
    assert instructions_key.key_id != evidence_key.key_id
    assert instructions_key.key_id == hashlib.sha256(instructions_key.public_key).hexdigest()[:16]

    enrolled = agent.signing_key_id
    assert enrolled == instructions_key.key_id
    inst = queue(world, agent)
    [envelope] = heartbeat_leasing(client, auth)
    assert envelope == {"payload": inst.payload, "signature": inst.signature, "key_id": instructions_key.key_id}
    assert verify_instruction(envelope, {enrolled: instructions_key.public_key}, str(agent.pk), inst.issued_at)

    blob = json.loads(evidence.read_blob(anchors.anchor_history("user:tester")))
    assert (blob["key_id"], blob["public_key"]) == (evidence_key.key_id, evidence_key.public_key_b64)
    assert keyring.verify(evidence_key.public_key, canonical_json(blob["anchor"]), blob["signature"])


def heartbeat_leasing(client, auth) -> list:
    r = post_json(client, "/api/v1/agent/heartbeat/", {"capacity": 1}, HTTP_AUTHORIZATION=auth)
    return r.json()["instructions"]


def test_enrollment_gives_every_active_instruction_key_and_pins_the_newest(site, client):
    old = keyset.current().signer(keyset.INSTRUCTIONS)
    new = rotate("instructions")
    agent, _auth = make_agent(site, "late")
    assert agent.signing_key_id == new
    from rmm.inventory import services as inventory

    _, token = inventory.create_enrollment_token(site)
    r = post_json(client, "/api/v1/agent/enroll/", {"token": token, "facts": {"hostname": "late-2"}})
    assert r.status_code == 201, r.content
    body = r.json()
    current = keyset.current()
    assert body["server_key_id"] == new
    assert body["server_public_key"] == current.get(keyset.INSTRUCTIONS, new).public_key_b64
    assert body["server_keys"] == {old.key_id: old.public_key_b64, new: body["server_public_key"]}


def test_a_rotation_reaches_the_agent_and_each_agent_is_signed_for_with_a_key_it_holds(world, site, client):
    agent, auth = make_agent(site, "rotating")
    k1 = agent.signing_key_id
    k2 = rotate("instructions")
    held = {k1: keyset.current().get(keyset.INSTRUCTIONS, k1).public_key}

    # Not yet acknowledged: its instructions are still signed with the key it holds.
    assert queue(world, agent).key_id == k1
    answer = heartbeat(client, auth, [k1])
    assert answer["signing_keys"]["retirements"] == []
    learnt, refused = keyring.apply_update(held, answer["signing_keys"], "instructions")
    assert refused == [] and set(learnt) == {k1, k2}
    assert Agent.objects.get(pk=agent.pk).signing_key_id == k1

    # Acknowledged (it reports both): no more statements, and its next instructions use K2.
    assert "signing_keys" not in heartbeat(client, auth, sorted(learnt))
    assert Agent.objects.get(pk=agent.pk).signing_key_id == k2
    Instruction.objects.filter(agent=agent).update(status="succeeded")  # one at a time per asset
    later = queue(world, agent)
    assert later.key_id == k2
    assert verify_instruction(
        {"payload": later.payload, "signature": later.signature, "key_id": later.key_id},
        learnt,
        str(agent.pk),
        later.issued_at,
    )
    actions = list(HistoryEvent.objects.filter(action__startswith="signing_key.").values_list("action", "actor"))
    assert ("signing_key.rotated", "cli:rmm_signing_key") in actions


def test_an_agent_that_missed_two_rotations_gets_the_chain(site, client):
    agent, auth = make_agent(site, "asleep")
    k1 = agent.signing_key_id
    k2, k3 = rotate("instructions"), rotate("instructions")
    held = {k1: keyset.current().get(keyset.INSTRUCTIONS, k1).public_key}
    update = heartbeat(client, auth, [k1])["signing_keys"]
    assert len(update["rotations"]) == 2
    learnt, refused = keyring.apply_update(held, update, "instructions")
    assert refused == [] and set(learnt) == {k1, k2, k3}
    # An agent that holds K2 already gets only the last link.
    assert len(heartbeat(client, auth, [k1, k2])["signing_keys"]["rotations"]) == 1


def test_retiring_a_key(world, site, client):
    agent, auth = make_agent(site, "retiring")
    k1 = agent.signing_key_id
    k2 = rotate("instructions")
    queued = queue(world, agent)
    with pytest.raises(CommandError, match="1 active agent"):
        call_command("rmm_signing_key", "retire", "--purpose", "instructions", "--key-id", k1)
    with pytest.raises(CommandError, match="newest"):
        call_command("rmm_signing_key", "retire", "--purpose", "instructions", "--key-id", k2)
    keys = keyset.current()
    held = {k: keys.get(keyset.INSTRUCTIONS, k).public_key for k in (k1, k2)}
    heartbeat(client, auth, [k1, k2])  # it now holds K2
    with pytest.raises(CommandError, match="1 queued or running"):  # but K1 signed work that still waits
        call_command("rmm_signing_key", "retire", "--purpose", "instructions", "--key-id", k1)
    Instruction.objects.filter(pk=queued.pk).update(status="succeeded")
    call_command("rmm_signing_key", "retire", "--purpose", "instructions", "--key-id", k1, stdout=io.StringIO())

    update = heartbeat(client, auth, [k1, k2])["signing_keys"]
    assert update["rotations"] == []
    assert keyring.apply_update(held, update, "instructions") == ({k2: held[k2]}, [])
    assert "signing_keys" not in heartbeat(client, auth, [k2])
    event = HistoryEvent.objects.get(action="signing_key.retired")
    assert event.payload == {"purpose": "instructions", "key_id": k1, "signed_by": k2}
    assert [k.key_id for k in keyset.current().active(keyset.INSTRUCTIONS)] == [k2]


def test_anchors_signed_before_an_evidence_rotation_still_verify(events, settings):
    before = anchors.anchor_history("user:tester")
    old = keyset.current().signer(keyset.EVIDENCE)
    new = rotate("evidence")
    after = anchors.anchor_history("user:tester")
    key_ids = [json.loads(evidence.read_blob(row))["key_id"] for row in (before, after)]
    assert key_ids == [old.key_id, new]
    # Retired, the old key's private half is deleted: trust in it now comes from the rotation
    # statement that the new key signed.
    out = io.StringIO()
    call_command("rmm_signing_key", "retire", "--purpose", "evidence", "--key-id", old.key_id, stdout=out)
    assert f"Deleted its private key {settings.RMM_SIGNING_KEY_DIR}/initial-evidence.pem." in out.getvalue()
    assert old.key_id not in keyset.current().private
    code, out, err = verify()
    assert (code, err) == (0, "")
    assert "2 anchors checked" in out


def test_a_key_slipped_into_the_registry_is_not_the_servers(events, caplog):
    """Someone with database rights adds a key of their own, with a rotation statement they signed
    themselves: nothing links it to a key the server holds, so its anchors fail."""
    anchors.anchor_history("user:tester")
    current = keyset.current().signer(keyset.EVIDENCE)
    forger, evil = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    text = keyring.rotation_payload(
        "evidence", current.sequence + 1, store.raw_public(forger), store.raw_public(evil), "2026-01-01T00:00:00Z", "x"
    )
    evil_id = keyring.key_id(store.raw_public(evil))
    SigningKey.objects.create(
        purpose="evidence",
        sequence=current.sequence + 1,
        key_id=evil_id,
        public_key=keyring.b64(store.raw_public(evil)),
        not_before=current.not_before,
        rotation={
            "payload": text,
            "key_id": keyring.key_id(store.raw_public(forger)),
            "signature": keyring.b64(forger.sign(text.encode())),
            "new_key_signature": keyring.b64(evil.sign(text.encode())),
        },
    )
    with caplog.at_level(logging.ERROR, logger="rmm.keys.keyset"):
        keys = keyset.current()
    assert evil_id not in [k.key_id for k in keys.keys(keyset.EVIDENCE)]  # never used, never sent
    assert f"evidence key #{current.sequence + 1} ({evil_id}) left out: its rotation statement does not link it" in (
        caplog.text
    )
    out = io.StringIO()
    call_command("rmm_signing_key", "list", "--purpose", "evidence", stdout=out)
    assert f"PROBLEM      evidence key #{current.sequence + 1} ({evil_id}) left out" in out.getvalue()
    assert evil_id not in anchors.trusted_keys()
    signed = anchors.statement(HistoryEvent.objects.order_by("-sequence").first().sequence, "0" * 64, "now")
    blob = canonical_json(
        {
            "anchor": signed,
            "key_id": evil_id,
            "signature": keyring.b64(evil.sign(canonical_json(signed))),
            "public_key": keyring.b64(store.raw_public(evil)),
        }
    )
    name = evidence.anchor_name(signed["sequence"], hashlib.sha256(blob).hexdigest())
    default_storage.save(name, io.BytesIO(blob))
    code, _out, err = verify()
    assert code == 1
    assert f"FAILED: anchor {name}: it is signed by another key ({keyring.fingerprint(store.raw_public(evil))})" in err


def test_upgrading_a_server_with_one_key(settings, tmp_path, site, client, events):
    """The key of a server from before rotation (RMM_SIGNING_KEY_FILE): agents pinned it and anchors
    were signed with it. It becomes the first instruction key, and the first evidence key, which is
    rotated at once so that the two purposes no longer share it; old anchors still verify."""
    legacy = Ed25519PrivateKey.generate()
    settings.RMM_SIGNING_KEY_FILE = str(tmp_path / "server_ed25519.pem")
    settings.RMM_SIGNING_KEY_DIR = str(tmp_path / "signing")
    store.write_private(tmp_path / "server_ed25519.pem", store.pem(legacy))
    legacy_raw = store.raw_public(legacy)
    # An anchor as the server signed it before key ids, and an instruction queued then.
    signed = anchors.statement(events[-1].sequence, events[-1].hash, "2025-01-01T00:00:00+00:00")
    old_anchor = canonical_json(
        {
            "anchor": signed,
            "signature": keyring.b64(legacy.sign(canonical_json(signed))),
            "public_key": keyring.b64(legacy_raw),
            "key_fingerprint": keyring.fingerprint(legacy_raw),
        }
    )
    digest = hashlib.sha256(old_anchor).hexdigest()
    evidence.put_blob(evidence.anchor_name(signed["sequence"], digest), old_anchor, digest)
    from evidence.types import HISTORY_ANCHOR

    evidence.record(
        asset=None,
        evidence_type=HISTORY_ANCHOR,
        related_entity="history_event",
        related_id=__import__("uuid").UUID(int=signed["sequence"]),
        actor="system",
        action=anchors.ANCHORED,
        payload={"sequence": signed["sequence"], "anchored_hash": signed["hash"], "time": signed["time"]},
        stored=(digest, f"{evidence.store_label()}/{evidence.anchor_name(signed['sequence'], digest)}"),
    )
    SigningKey.objects.all().delete()  # the registry as an upgraded server finds it: empty

    keys = keyset.current()
    legacy_id = keyring.key_id(legacy_raw)
    assert [k.key_id for k in keys.keys(keyset.INSTRUCTIONS)] == [legacy_id]
    [first, second] = keys.keys(keyset.EVIDENCE)
    assert first.key_id == legacy_id and first.retired_at is not None
    assert keys.signer(keyset.EVIDENCE).key_id == second.key_id != legacy_id
    assert (tmp_path / "signing" / "initial-evidence.pem").exists()
    anchors.anchor_history("user:tester")
    code, out, err = verify()
    assert (code, err) == (0, ""), err
    assert "2 anchors checked" in out
    # Agents enrolled before (no acknowledged key) are signed for with the key they pinned.
    agent, _auth = make_agent(site, "old-agent")
    Agent.objects.filter(pk=agent.pk).update(signing_key_id="")
    assert keys.signer_for_agent("", keys.signer(keyset.INSTRUCTIONS).not_before).key_id == legacy_id


def test_rotate_refuses_without_the_current_private_key_and_in_environment_mode(db, settings, tmp_path):
    keyset.current()
    settings.RMM_SIGNING_KEY_DIR = str(tmp_path / "elsewhere")  # a host without the keys
    settings.RMM_SIGNING_KEY_FILE = str(tmp_path / "none.pem")
    with pytest.raises(CommandError, match="has no private key here"):
        call_command("rmm_signing_key", "rotate", "--purpose", "instructions")
    settings.RMM_SIGNING_KEYS = base64.b64encode(store.pem(Ed25519PrivateKey.generate())).decode()
    with pytest.raises(CommandError, match="add it to RMM_SIGNING_KEYS, and pass --key-file"):
        call_command("rmm_signing_key", "rotate", "--purpose", "instructions")
    assert not (tmp_path / "elsewhere").exists()


def test_list_and_show(site):
    make_agent(site, "listed")
    k2 = rotate("instructions")
    out = io.StringIO()
    call_command("rmm_signing_key", "list", stdout=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4  # two instruction keys, the evidence key, the release key
    assert "#1" in lines[0] and "active" in lines[0] and "agents at this key: 1" in lines[0]
    assert "#2" in lines[1] and k2 in lines[1] and "signing" in lines[1] and "private key here" in lines[1]
    assert lines[2].startswith("evidence") and lines[3].startswith("releases")
    out = io.StringIO()
    call_command("rmm_signing_key", "show", "--purpose", "instructions", stdout=out)
    assert f"key id       {k2}" in out.getvalue() and "introduced   by key" in out.getvalue()


def test_the_first_instruction_of_a_new_server_is_signed_with_the_key_made_for_it(world, site, monkeypatch):
    """A server whose first signature is an instruction (agents written before any key existed, as
    a restored database or the benchmark's seeded fleet) makes its first keys then and signs with
    them: the job is queued, not refused as if the key were down."""
    asset = Asset.objects.create(site=site, hostname="seeded", os="Linux", architecture="x86_64")
    Agent.objects.create(asset=asset, secret_hash="0" * 64)
    SigningKey.objects.all().delete()
    monkeypatch.setattr(keyset, "_cached", None)
    job = scripting.create_script_job(
        world["psa"].user, script_id=world["script"].pk, asset_id=asset.pk, psa_task_id=world["task"].pk
    )
    inst = Instruction.objects.get(job_id=job.pk)
    assert inst.key_id == keyset.current().signer(keyset.INSTRUCTIONS).key_id
