"""Law 5: the execution history is append-only and hash-chained; the database refuses change; a command verifies."""

import pytest
from django.db import DatabaseError, connection, transaction

from evidence import anchors
from evidence import services as evidence
from rmm.history import services as history
from rmm.history.models import HistoryEvent
from tests.support.history import TABLE, drop_triggers, verify


def snapshot():
    return list(HistoryEvent.objects.order_by("sequence").values_list("sequence", "payload", "hash"))


def test_raw_sql_update_is_refused_by_the_database(events):
    before = snapshot()
    target = events[2].sequence
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET action = %s WHERE sequence = %s", ["forged", target])
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET actor = %s", ["nobody"])
    assert snapshot() == before


def test_emptying_the_table_at_once_is_refused(events):
    """TRUNCATE on PostgreSQL (a statement trigger); an unqualified DELETE on SQLite."""
    before = snapshot()
    statement = f"TRUNCATE {TABLE}" if connection.vendor == "postgresql" else f"DELETE FROM {TABLE}"
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement)
    assert snapshot() == before


def test_raw_sql_delete_is_refused_by_the_database(events):
    before = snapshot()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {TABLE} WHERE sequence = %s", [events[2].sequence])
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {TABLE}")
    assert snapshot() == before


def test_the_orm_cannot_change_or_delete_history_either(events):
    before = snapshot()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        HistoryEvent.objects.filter(sequence=events[0].sequence).update(payload={"n": 99})
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        events[1].delete()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        events[3].action = "forged"
        events[3].save()
    assert snapshot() == before


def test_verify_history_passes_a_good_chain_and_counts_it(events):
    code, out, err = verify()
    assert code == 0
    assert out == f"OK: {HistoryEvent.objects.count()} events verified; no anchors yet\n"
    assert err == ""
    # Appending more keeps it good, and the count follows.
    history.append("user:tester", "test.event", payload={"n": "more"})
    code, out, _ = verify()
    assert code == 0
    assert out == f"OK: {HistoryEvent.objects.count()} events verified; no anchors yet\n"


def test_every_kind_of_payload_reads_back_as_it_was_hashed(events):
    """Flat payloads are serialised once when appended; the others are made JSON-safe first.
    Either way the stored event, read back, must hash the same (the verifier re-serialises it)."""
    import datetime
    import uuid

    moment = datetime.datetime(2026, 12, 3, 10, 0, 0, 123456, tzinfo=datetime.UTC)
    payloads = [
        {"plain": "text", "n": 3, "x": 1.5, "yes": True, "none": None},
        {"ünïcode": "naïve — ✓", "quote": 'a "b" \\ c\ttab\nline'},
        {"id": uuid.UUID(int=7), "at": moment},  # made JSON-safe: str and ISO (milliseconds)
        {"nested": {"b": [1, 2, {"z": 1, "a": 2}], "a": None}},
        {"keys": {2: "two", 10: "ten"}},  # non-string keys become strings, then are sorted
        {},
    ]
    site = uuid.UUID(int=99)  # a site and a subject, as most events have
    sequences = history.append_many(
        history.Event("user:tester", "test.payload", "engine.instruction", f"s-{n}", site, p)
        for n, p in enumerate(payloads)
    )
    assert sequences == list(range(sequences[0], sequences[0] + len(payloads)))
    stored = HistoryEvent.objects.get(sequence=sequences[2]).payload
    assert stored == {"id": str(uuid.UUID(int=7)), "at": "2026-12-03T10:00:00.123Z"}
    assert HistoryEvent.objects.get(sequence=sequences[4]).payload == {"keys": {"2": "two", "10": "ten"}}
    assert verify()[0] == 0
    assert history.verify_chain().ok


def test_rows_are_built_in_the_order_of_the_tables_columns():
    """append_many COPYs tuples (and builds instances from them on SQLite) in this order."""
    assert tuple(f.attname for f in HistoryEvent._meta.concrete_fields) == history.ROW


def test_each_event_chains_to_the_one_before(events):
    for prev, ev in zip(events, events[1:], strict=False):
        assert ev.sequence == prev.sequence + 1
        assert ev.prev_hash == prev.hash


def test_a_changed_payload_is_named_by_sequence(events):
    target = events[2]
    drop_triggers()
    HistoryEvent.objects.filter(sequence=target.sequence).update(payload={"n": 2, "extra": "forged"})
    code, out, err = verify()
    assert code == 1
    assert out == ""
    assert err == (
        f"FAILED at event {target.sequence}: content does not match its hash "
        f"({target.sequence - 1} events verified before it)\n"
    )


def test_a_changed_actor_on_the_first_event_is_named(events):
    first = HistoryEvent.objects.order_by("sequence").first()
    drop_triggers()
    HistoryEvent.objects.filter(sequence=first.sequence).update(actor="user:someone-else")
    code, _out, err = verify()
    assert code == 1
    assert err.startswith(f"FAILED at event {first.sequence}: content does not match its hash")


def test_a_deleted_middle_event_is_named_by_sequence(events):
    target = events[2]
    drop_triggers()
    HistoryEvent.objects.filter(sequence=target.sequence).delete()
    code, out, err = verify()
    assert code == 1
    assert out == ""
    assert err == (
        f"FAILED at event {target.sequence}: event {target.sequence} is missing "
        f"({target.sequence - 1} events verified before it)\n"
    )


def test_rewriting_an_event_with_a_fresh_hash_breaks_the_next_link(events):
    """A forger who recomputes the changed event's own hash is caught at the following event."""
    target, following = events[2], events[3]
    forged_payload = {"n": "forged"}
    forged_hash = history.event_hash(
        target.prev_hash,
        target.sequence,
        target.created_at,
        target.actor,
        target.action,
        target.subject_type,
        target.subject_id,
        target.site_id,
        forged_payload,
    )
    drop_triggers()
    HistoryEvent.objects.filter(sequence=target.sequence).update(payload=forged_payload, hash=forged_hash)
    code, _out, err = verify()
    assert code == 1
    assert err == (
        f"FAILED at event {following.sequence}: previous hash does not match the chain "
        f"({following.sequence - 1} events verified before it)\n"
    )


def test_a_truncated_tail_is_detected(events):
    """Deleting the newest events leaves a shorter chain that still verifies from genesis; the
    signed anchor of the head, kept in the evidence store outside the database, catches it."""
    anchor = anchors.anchor_history("user:tester")
    name = evidence.storage_name(anchor)
    drop_triggers()
    # The database owner removes the anchored head and everything after it (the anchor's own event).
    HistoryEvent.objects.filter(sequence__gte=events[-1].sequence).delete()
    code, out, err = verify()
    assert code == 1
    assert out == ""
    last = events[-1].sequence
    assert err.startswith(f"FAILED at event {last}: the chain ends at event {last - 1}, but anchor {name} (signed "), (
        err
    )
    assert err.endswith(f") covers event {last} ({last - 1} events verified before it)\n")


def test_the_triggers_are_back_after_a_tampering_test(events):
    """Dropping triggers happened inside other tests' transactions; it must not have leaked."""
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        HistoryEvent.objects.filter(sequence=events[0].sequence).delete()
    assert verify()[0] == 0
