"""The SIEM record formats (docs/integrations.md#the-siem-feed): the JSON record carries what the
event's hash covers, so a SIEM recomputes the chain; CEF escapes its separators; the RFC 5424
header's fields; RFC 6587 octet counting counts bytes, not characters."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime

import pytest

from rmm.history import services as history
from rmm.history.models import HistoryEvent
from rmm.siem import records
from tests.siem.collectors import read_frames

AT = datetime(2026, 12, 7, 4, 5, 6, 789012, tzinfo=UTC)


def event(**changes) -> HistoryEvent:
    fields = {
        "sequence": 42,
        "created_at": AT,
        "actor": "user:tech",
        "action": "job.created",
        "subject_type": "engine.job",
        "subject_id": "4f1c",
        "site_id": None,
        "payload": {"reason": "patch"},
        "prev_hash": "a" * 64,
        "hash": "b" * 64,
    }
    return HistoryEvent(**{**fields, **changes})


def test_the_json_record_recomputes_to_the_events_hash_and_links_to_the_one_before(db, site):
    history.append("user:tech", "job.created", site_id=site.pk, payload={"reason": "ü = ✓", "n": 1})
    history.append("system", "refused.lease", payload={"nested": {"b": [1, 2]}, "a": None})
    previous = history.GENESIS_HASH
    for stored in HistoryEvent.objects.order_by("sequence"):
        received = json.loads(records.as_json(stored))
        body = {key: value for key, value in received.items() if key not in ("prev_hash", "hash")}
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())
        assert received["prev_hash"] == previous
        assert history.link_hash(received["prev_hash"], digest.hexdigest()) == received["hash"] == stored.hash
        previous = received["hash"]
    assert received["action"] == "refused.lease" and received["site_id"] is None


def test_the_rfc_5424_header():
    line = records.syslog_message(event(action="job.created"), "json", "rmm-01").decode()
    head, msg = line.split(" {", 1)
    assert re.fullmatch(
        r"<110>1 2026-12-07T04:05:06\.789012Z rmm-01 rmm - job\.created "
        r'\[rmm@32473 sequence="42" hash="b{64}" prev_hash="a{64}"\]',
        head,
    )
    assert json.loads("{" + msg)["sequence"] == 42
    # Facility 13 (log audit): severity 6 (informational), 4 (warning) for a refusal.
    assert records.syslog_message(event(action="refused.lease"), "json", "h").startswith(b"<108>1 ")
    # Header fields are printable ASCII without spaces; MSGID at most 32 characters.
    odd = records.syslog_message(event(action="x y\u00e9" + "z" * 40), "json", "my host").decode()
    assert odd.split(" ")[2] == "my_host"
    assert odd.split(" ")[5] == ("x_y_" + "z" * 40)[:32]


def test_a_structured_data_value_escapes_quote_backslash_and_bracket():
    assert records._sd_value('a"b\\c]d') == 'a\\"b\\\\c\\]d'


def test_octet_counting_counts_bytes():
    messages = [records.syslog_message(event(payload={"text": "ünïcødé ✓"}), "json", "h"), b"short", b"a 12 b"]
    framed = records.octet_counted(messages)
    assert framed.startswith(str(len(messages[0])).encode() + b" <110>1")
    assert len(messages[0]) > len(messages[0].decode())  # bytes, not characters
    assert read_frames(framed) == messages


@pytest.mark.parametrize(
    ("action", "payload", "header", "extension"),
    [
        ("job.created", {"k": "v"}, "|job.created|job.created|3|", 'cs5={"k":"v"}'),
        ("refused.a|b", {}, "|refused.a\\|b|refused.a\\|b|7|", "act=refused.a|b "),
        ("x", {"e": "a=b\\c\nd\re"}, "|x|x|3|", 'cs5={"e":"a\\=b\\\\\\\\c\\\\nd\\\\re"}'),
        ("x", {"p": "pipe|in value"}, "|x|x|3|", 'cs5={"p":"pipe|in value"}'),
    ],
    ids=["plain", "pipe-in-header", "equals-backslash-newline", "pipe-in-extension"],
)
def test_cef_escapes_its_separators(action, payload, header, extension):
    text = records.as_cef(event(action=action, payload=payload))
    assert text.startswith("CEF:0|RMM|RMM execution engine|1|")
    assert header in text
    assert extension in text
    assert "\n" not in text and "\r" not in text
    assert "externalId=42 cs1Label=hash cs1=" + "b" * 64 in text
    assert f"rt={int(AT.timestamp() * 1000)} " in text


def test_a_newline_in_a_cef_header_field_does_not_end_the_record():
    text = records.as_cef(event(action="a\nb\\c"))
    assert "|a b\\\\c|" in text and "\n" not in text


def test_splunk_and_elastic_bodies():
    events = [event(sequence=1, hash="1" * 64), event(sequence=2, hash="2" * 64)]
    hec = records.splunk_hec(events, "json", "rmm-01", "security").decode().split("\n")
    first = json.loads(hec[0])
    assert first["host"] == "rmm-01" and first["index"] == "security" and first["sourcetype"] == "rmm:history"
    assert first["event"]["sequence"] == 1 and first["time"] == AT.timestamp()
    cef = json.loads(records.splunk_hec(events, "cef", "h").decode().split("\n")[1])
    assert cef["event"].startswith("CEF:0|") and "index" not in cef
    bulk = records.elastic_bulk(events, "json").decode()
    assert bulk.endswith("\n")
    lines = [json.loads(line) for line in bulk.splitlines()]
    assert lines[0] == {"create": {"_index": "rmm-history", "_id": "1" * 64}}
    assert lines[1]["@timestamp"] == AT.isoformat() and lines[1]["sequence"] == 1
    assert lines[3]["hash"] == "2" * 64
