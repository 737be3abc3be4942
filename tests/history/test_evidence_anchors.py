"""History anchors: the signed head of the chain, kept in the evidence store, catch what a
database owner can do to the history: cut its tail, or rebuild it."""

import base64
import io
import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.db import transaction
from django_q.models import Schedule

from evidence import anchors, tasks
from evidence import services as evidence
from evidence.models import RmmEvidence
from evidence.types import HISTORY_ANCHOR
from rmm.history import services as history
from rmm.history.models import HistoryEvent
from rmm_agent.protocol import canonical_json
from tests.support.history import drop_evidence_triggers, drop_triggers, verify


def test_an_anchor_signs_the_head_and_its_own_event_comes_after_it(events):
    head = events[-1]
    row = anchors.anchor_history("user:tester")
    assert (row.evidence_type, row.related_entity, row.related_id.int) == (
        "history_anchor",
        "history_event",
        head.sequence,
    )
    assert row.site_id is None and row.asset_id is None
    blob = json.loads(evidence.read_blob(row))
    signed = blob["anchor"]
    assert signed == {
        "purpose": "rmm.history_anchor",
        "sequence": head.sequence,
        "hash": head.hash,
        "time": signed["time"],
    }
    public_key = Ed25519PublicKey.from_public_bytes(base64.b64decode(blob["public_key"]))
    public_key.verify(base64.b64decode(blob["signature"]), canonical_json(signed))  # raises if it does not verify
    assert blob["key_fingerprint"] == anchors.key_fingerprint(anchors.server_public_key())
    own = HistoryEvent.objects.get(sequence=row.history_sequence)
    assert own.sequence > head.sequence
    assert (own.action, own.payload["sequence"], own.payload["anchored_hash"]) == (
        "history.anchored",
        head.sequence,
        head.hash,
    )
    assert evidence.storage_name(row) == f"evidence/anchors/{head.sequence:012d}-{row.hash}.json"
    code, out, _ = verify()
    assert code == 0
    assert out.startswith(
        f"OK: {HistoryEvent.objects.count()} events verified; 1 anchors checked, the newest at event {head.sequence} ("
    )


def test_deleting_the_tail_with_the_triggers_dropped_is_reported_through_the_anchor(events):
    """The database owner cuts the newest events and the anchor records too; the store still has the anchor."""
    history.append("user:tester", "test.event", payload={"n": "before the anchor"})
    row = anchors.anchor_history("user:tester")
    anchored = row.related_id.int
    name = evidence.storage_name(row)
    drop_triggers()
    HistoryEvent.objects.filter(sequence__gte=anchored - 1).delete()
    drop_evidence_triggers()  # the evidence table's triggers go too
    RmmEvidence.objects.filter(pk=row.pk).delete()
    code, out, err = verify()
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert f"FAILED: anchor {name}: it has no evidence record (deleted from the database?)" in lines
    assert lines[-1].startswith(
        f"FAILED at event {anchored - 1}: the chain ends at event {anchored - 2}, but anchor {name} (signed "
    )
    assert lines[-1].endswith(f") covers event {anchored} ({anchored - 2} events verified before it)")


def test_a_rebuilt_history_no_longer_matches_its_anchor(events):
    """Rewriting an event and recomputing every later hash makes a chain that verifies on its own."""
    row = anchors.anchor_history("user:tester")
    anchored = row.related_id.int
    target = events[1]
    drop_triggers()
    rows = list(HistoryEvent.objects.filter(sequence__gte=target.sequence).order_by("sequence"))
    prev = target.prev_hash
    for ev in rows:
        payload = {"n": "forged"} if ev.sequence == target.sequence else ev.payload
        digest = history.event_hash(
            prev, ev.sequence, ev.created_at, ev.actor, ev.action, ev.subject_type, ev.subject_id, ev.site_id, payload
        )
        HistoryEvent.objects.filter(sequence=ev.sequence).update(payload=payload, prev_hash=prev, hash=digest)
        prev = digest
    assert history.verify_chain().ok  # the chain alone cannot tell
    code, _out, err = verify()
    assert code == 1
    assert err.startswith(
        f"FAILED at event {anchored}: its hash does not match anchor {evidence.storage_name(row)} (signed "
    )


def test_an_altered_or_foreign_anchor_is_named(events):
    row = anchors.anchor_history("user:tester")
    name = evidence.storage_name(row)
    path = default_storage.path(name)
    with open(path, "rb") as fh:
        data = fh.read()
    with open(path, "wb") as fh:
        fh.write(data.replace(b'"sequence":', b'"sequence": '))
    code, _, err = verify()
    assert code == 1
    assert f"FAILED: anchor {name}: its content does not match the hash in its name" in err
    # A well-formed anchor signed with another key, placed in the store by someone without ours.
    with open(path, "wb") as fh:
        fh.write(data)
    forger = Ed25519PrivateKey.generate()
    signed = json.loads(data)["anchor"]
    from cryptography.hazmat.primitives import serialization

    raw = forger.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    blob = canonical_json(
        {
            "anchor": signed,
            "signature": base64.b64encode(forger.sign(canonical_json(signed))).decode(),
            "public_key": base64.b64encode(raw).decode(),
            "key_fingerprint": anchors.key_fingerprint(raw),
        }
    )
    import hashlib

    forged_name = evidence.anchor_name(signed["sequence"], hashlib.sha256(blob).hexdigest())
    default_storage.save(forged_name, io.BytesIO(blob))
    code, _, err = verify()
    assert code == 1
    assert f"FAILED: anchor {forged_name}: it is signed by another key ({anchors.key_fingerprint(raw)})" in err


def test_an_anchor_blob_missing_from_the_store_is_named(events):
    row = anchors.anchor_history("user:tester")
    default_storage.delete(evidence.storage_name(row))
    code, _, err = verify()
    assert code == 1
    assert f"its evidence record {row.pk} exists but the blob is missing from the store" in err


def test_the_schedule_anchors_hourly_and_only_when_the_head_moved(events):
    schedule = Schedule.objects.get(name="rmm.history.anchor")
    assert (schedule.func, schedule.schedule_type, schedule.minutes) == ("evidence.tasks.anchor_history", "I", 60)
    assert tasks.anchor_history() == events[-1].sequence
    assert tasks.anchor_history() is None  # the head is the last anchor's own event: nothing new
    history.append("user:tester", "test.event", payload={"n": "new"})
    assert tasks.anchor_history() == HistoryEvent.objects.order_by("-sequence").first().sequence - 1
    assert RmmEvidence.objects.filter(evidence_type=HISTORY_ANCHOR).count() == 2


def test_the_commands_anchor_on_demand_and_print_the_key(events):
    out = io.StringIO()
    call_command("anchor_history", stdout=out)
    fingerprint = anchors.key_fingerprint(anchors.server_public_key())
    assert out.getvalue().startswith(f"Anchored event {events[-1].sequence} in storage://default/evidence/anchors/")
    assert out.getvalue().strip().endswith(f"key {fingerprint}")
    out = io.StringIO()
    call_command("evidence_signing_key", stdout=out)
    assert out.getvalue().strip() == fingerprint


def test_older_version_1_events_still_verify_before_version_2_ones(events):
    """Events written before version 2 of the chain keep their hashes; after a version 2 event, only
    version 2 passes (so nobody can fall back to the older form to slip a change through)."""
    switch = events[1].sequence
    drop_triggers()
    prev = history.GENESIS_HASH
    for ev in HistoryEvent.objects.order_by("sequence"):  # as a server upgraded after event `switch` wrote it
        fields = (
            ev.sequence,
            ev.created_at,
            ev.actor,
            ev.action,
            ev.subject_type,
            ev.subject_id,
            ev.site_id,
            ev.payload,
        )
        digest = history.event_hash_v1(prev, *fields) if ev.sequence <= switch else history.event_hash(prev, *fields)
        HistoryEvent.objects.filter(sequence=ev.sequence).update(prev_hash=prev, hash=digest)
        prev = digest
    assert history.verify_chain().ok
    last = HistoryEvent.objects.order_by("-sequence").first()
    fields = (
        last.sequence,
        last.created_at,
        last.actor,
        last.action,
        last.subject_type,
        last.subject_id,
        last.site_id,
        last.payload,
    )
    HistoryEvent.objects.filter(sequence=last.sequence).update(hash=history.event_hash_v1(last.prev_hash, *fields))
    report = history.verify_chain()
    assert (report.ok, report.first_bad, report.problem) == (False, last.sequence, "content does not match its hash")


class StoppedBetweenTheWrites(Exception):
    """What the process's death does to the database part: none of it commits."""


def anchor_left_unrecorded() -> str:
    """An anchor run that wrote its file and died before its record committed: the store keeps
    the file (storage is not transactional), the record and its event roll back. Its file name."""
    before = set(anchors.stored_anchor_names())
    try:
        with transaction.atomic():
            anchors.anchor_history("system")
            raise StoppedBetweenTheWrites
    except StoppedBetweenTheWrites:
        pass
    [name] = set(anchors.stored_anchor_names()) - before
    assert not RmmEvidence.objects.filter(evidence_type=HISTORY_ANCHOR).exists()
    return name


def test_an_anchor_file_left_without_its_record_is_not_reported_as_tampering(events):
    name = anchor_left_unrecorded()
    history.append("user:tester", "test.event", payload={"n": "after the stopped run"})
    code, out, err = verify()
    assert (code, err) == (0, "")
    assert out.splitlines()[0].startswith(f"OK: {HistoryEvent.objects.count()} events verified; 1 anchors checked")
    assert out.splitlines()[1] == (
        f"NOTE: anchor {name} has no record yet: the run that wrote it stopped before recording it; "
        "the next anchor run records it"
    )


def test_the_next_anchor_run_records_the_file_a_stopped_run_left(events):
    name = anchor_left_unrecorded()
    anchored = int(name.rsplit("/", 1)[-1].split("-")[0])
    history.append("user:tester", "test.event", payload={"n": "after the stopped run"})
    assert tasks.anchor_history() is not None  # the schedule: the head moved since the stopped run
    recovered = HistoryEvent.objects.get(action="history.anchor_recovered")
    assert (recovered.actor, recovered.payload["sequence"]) == ("system", anchored)
    rows = RmmEvidence.objects.filter(evidence_type=HISTORY_ANCHOR).order_by("history_sequence")
    assert [evidence.storage_name(row) for row in rows][0] == name
    assert [row.related_id.int for row in rows] == [anchored, recovered.sequence]  # then the head after it
    code, out, err = verify()
    assert (code, err) == (0, "")
    assert "2 anchors checked" in out and "NOTE" not in out
    assert tasks.anchor_history() is None  # recorded once, not at every run
    assert HistoryEvent.objects.filter(action="history.anchor_recovered").count() == 1


def test_an_anchor_whose_record_was_deleted_is_still_reported(events):
    """The record's history event stays when a database owner deletes the record: that file is no
    stopped run's, and verify_history fails as before."""
    row = anchors.anchor_history("user:tester")
    drop_evidence_triggers()
    RmmEvidence.objects.filter(pk=row.pk).delete()
    code, _out, err = verify()
    assert code == 1
    assert f"FAILED: anchor {evidence.storage_name(row)}: it has no evidence record (deleted from the database?)" in err
    assert anchors.unrecorded_anchors() == []  # and the next run does not record it as its own
