"""What a SIEM receives for one history event (docs/integrations.md#the-siem-feed): the event as
JSON (the fields its hash covers, plus ``prev_hash`` and ``hash``) or as CEF, inside an RFC 5424
syslog message with octet-counted framing (RFC 6587), a Splunk HEC event, or an Elastic bulk pair.
Pure functions of the event: a repeat after an outage sends the same bytes."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC

from rmm.history.models import HistoryEvent
from rmm_agent.protocol import canonical_json

APP_NAME = "rmm"
FACILITY = 13  # log audit (RFC 5424, table 1)
SD_ID = "rmm@32473"  # 32473: the enterprise number RFC 5612 reserves for documentation
SEVERITY_WARNING, SEVERITY_INFO = 4, 6
CEF_VENDOR, CEF_PRODUCT, CEF_VERSION = "RMM", "RMM execution engine", "1"
SPLUNK_SOURCE = "rmm"
ELASTIC_INDEX = "rmm-history"


def record(event: HistoryEvent) -> dict:
    """The event's content exactly as its hash commits to it (rmm.history.services.event_body),
    with its chain position and hashes: sha256(prev_hash + sha256(canonical JSON of the other
    eight fields)) is ``hash``."""
    return {
        "sequence": event.sequence,
        "created_at": event.created_at.isoformat(),
        "actor": event.actor,
        "action": event.action,
        "subject_type": event.subject_type,
        "subject_id": event.subject_id,
        "site_id": str(event.site_id) if event.site_id else None,
        "payload": event.payload,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def as_json(event: HistoryEvent) -> str:
    return canonical_json(record(event)).decode()


def refused(event: HistoryEvent) -> bool:
    return event.action.startswith("refused.")


def _cef_header(value: str) -> str:
    """CEF header fields escape backslash and pipe; a line break would end the record."""
    return value.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _cef_value(value: str) -> str:
    """CEF extension values escape backslash and equals sign, and write line breaks as \\n, \\r."""
    return value.replace("\\", "\\\\").replace("=", "\\=").replace("\r", "\\r").replace("\n", "\\n")


def as_cef(event: HistoryEvent) -> str:
    """``CEF:0|RMM|RMM execution engine|1|<action>|<action>|<severity>|<extension>``; severity 7
    for a refusal, 3 otherwise."""
    extension = {
        "rt": str(int(event.created_at.timestamp() * 1000)),
        "act": event.action,
        "suser": event.actor,
        "externalId": str(event.sequence),
        "cs1Label": "hash",
        "cs1": event.hash,
        "cs2Label": "prevHash",
        "cs2": event.prev_hash,
        "cs3Label": "siteId",
        "cs3": str(event.site_id) if event.site_id else "",
        "cs4Label": "subject",
        "cs4": f"{event.subject_type}:{event.subject_id}" if event.subject_type else event.subject_id,
        "cs5Label": "payload",
        "cs5": canonical_json(event.payload).decode(),
    }
    action = _cef_header(event.action)
    severity = "7" if refused(event) else "3"
    head = f"CEF:0|{CEF_VENDOR}|{CEF_PRODUCT}|{CEF_VERSION}|{action}|{action}|{severity}|"
    return head + " ".join(f"{key}={_cef_value(value)}" for key, value in extension.items())


def message(event: HistoryEvent, fmt: str) -> str:
    return as_cef(event) if fmt == "cef" else as_json(event)


def _printable(text: str, limit: int) -> str:
    """A header field of RFC 5424: printable US-ASCII without spaces, at most ``limit`` long."""
    cleaned = "".join(ch if 33 <= ord(ch) <= 126 else "_" for ch in text)[:limit]
    return cleaned or "-"


def _sd_value(value: str) -> str:
    """PARAM-VALUE escapes '"', '\\' and ']' (RFC 5424, 6.3.3)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def syslog_message(event: HistoryEvent, fmt: str, hostname: str) -> bytes:
    """``<PRI>1 TIMESTAMP HOSTNAME rmm - MSGID [rmm@32473 sequence="…" hash="…" prev_hash="…"] MSG``:
    facility 13 (log audit), severity 4 (warning) for a refusal and 6 (informational) otherwise;
    the timestamp is the event's, in UTC with microseconds; MSGID its action."""
    severity = SEVERITY_WARNING if refused(event) else SEVERITY_INFO
    stamp = event.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    structured = (
        f'[{SD_ID} sequence="{event.sequence}" hash="{_sd_value(event.hash)}" prev_hash="{_sd_value(event.prev_hash)}"]'
    )
    head = (
        f"<{FACILITY * 8 + severity}>1 {stamp} {_printable(hostname, 255)} {APP_NAME} - "
        f"{_printable(event.action, 32)} {structured} "
    )
    return head.encode("ascii") + message(event, fmt).encode("utf-8")


def octet_counted(messages: Iterable[bytes]) -> bytes:
    """RFC 6587 octet counting: each message preceded by its length in bytes and a space."""
    return b"".join(str(len(item)).encode("ascii") + b" " + item for item in messages)


def splunk_hec(events: Iterable[HistoryEvent], fmt: str, hostname: str, index: str = "") -> bytes:
    """Splunk HEC's ``/services/collector/event`` body: one JSON object per event, back to back."""
    lines = []
    for event in events:
        item = {
            "time": round(event.created_at.timestamp(), 6),
            "host": hostname,
            "source": SPLUNK_SOURCE,
            "sourcetype": "rmm:history:cef" if fmt == "cef" else "rmm:history",
            "event": as_cef(event) if fmt == "cef" else record(event),
        }
        if index:
            item["index"] = index
        lines.append(json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
    return "\n".join(lines).encode("utf-8")


def elastic_bulk(events: Iterable[HistoryEvent], fmt: str, index: str = "") -> bytes:
    """Elastic's ``_bulk`` body (NDJSON): a ``create`` whose ``_id`` is the event's hash, so that a
    repeat is refused as a duplicate (409) rather than stored twice, then the document."""
    lines = []
    for event in events:
        action = {"create": {"_index": index or ELASTIC_INDEX, "_id": event.hash}}
        stamp = event.created_at.isoformat()
        if fmt == "cef":
            document = {"@timestamp": stamp, "message": as_cef(event), "sequence": event.sequence, "hash": event.hash}
        else:
            document = {"@timestamp": stamp, **record(event)}
        for item in (action, document):
            lines.append(json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode("utf-8")
