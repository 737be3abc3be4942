"""Live output: what a running step has printed so far, as its agent streams it (docs/agent.md,
Live output), for the job page.

Kept in the cache, never in the database: it is not the record (the signed, hashed result is)
and it changes twice a second. Each stream keeps its last ``LIVE_TAIL_BYTES``; each call costs
two queries (the agent, the instruction) whatever was sent.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass

from django.conf import settings

from rmm.core.errors import Conflict, InvalidInput, NotFound, ServiceError
from rmm.engine import agent_limits, events
from rmm.engine.models import Instruction
from rmm.engine.states import JobStatus
from rmm.history import services as history
from rmm_agent.protocol import LIVE_CHUNK_BYTES, LIVE_OUTPUT_SECONDS, LIVE_STREAMS, LIVE_TAIL_BYTES, utf8_tail

# Calls closer together than this are answered 429: the agent spaces them LIVE_OUTPUT_SECONDS
# from the answer, so a little less here leaves room for the network's jitter.
MIN_SPACING_SECONDS = LIVE_OUTPUT_SECONDS * 0.8
MAX_OFFSET = 2**53  # any stream position an agent can reach; larger is not a position


class TooLarge(ServiceError):
    status_code = 413


class TooFrequent(ServiceError):
    """429: the agent called again sooner than the protocol allows; ``retry_after`` in seconds."""

    status_code = 429

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Tail:
    """One stream as the job page shows it: its last bytes, and its length so far in the
    agent's count of characters (where the next live event continues it)."""

    text: str
    total: int


def _key(instruction_id) -> str:
    return f"{settings.RMM_INSTANCE_NAME}:live-output:{instruction_id}"


def _chunks(data: dict) -> tuple[uuid.UUID, dict[str, tuple[int, str]]]:
    """The instruction id and each stream's (offset, text) of a call, or a 400 naming the field
    (413 for a text past ``LIVE_CHUNK_BYTES``)."""
    try:
        instruction_id = uuid.UUID(str(data.get("instruction_id")))
    except ValueError:
        raise InvalidInput("Must be the id of an instruction.", field="instruction_id") from None
    chunks = {}
    for name in LIVE_STREAMS:
        if name not in data:
            continue
        chunk = data[name]
        if not isinstance(chunk, dict):
            raise InvalidInput("Must be an object with offset and text.", field=name)
        offset, text = chunk.get("offset"), chunk.get("text")
        if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < MAX_OFFSET:
            raise InvalidInput("Must be the number of characters of the stream before text.", field=f"{name}.offset")
        if not isinstance(text, str):
            raise InvalidInput("Must be text.", field=f"{name}.text")
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidInput("Must not contain lone surrogates.", field=f"{name}.text") from None
        if size > LIVE_CHUNK_BYTES:
            raise TooLarge(f"At most {LIVE_CHUNK_BYTES} bytes of UTF-8 per stream and call.", field=f"{name}.text")
        chunks[name] = (offset, text)
    if not chunks:
        raise InvalidInput(f"Send at least one of {', '.join(LIVE_STREAMS)}.", field="stdout")
    return instruction_id, chunks


def _append(held: dict, name: str, offset: int, text: str) -> dict | None:
    """Add a chunk to a stream's held tail; the live event's part for it (None: nothing new).
    A chunk resent (its answer was lost) adds only what is new; one past the end (the agent
    dropped output it could not send in time) is marked as a gap."""
    total, tail = held.get(name, (0, ""))
    end = offset + len(text)
    if end <= total:
        return None
    if offset < total:
        text = text[total - offset :]
    elif offset > total:
        text = f"\n[… {offset - total} characters not sent …]\n{text}"
    held[name] = (end, utf8_tail(tail + text, LIVE_TAIL_BYTES))
    return {"from": total, "to": end, "text": text}


def take_output(agent, data: dict) -> dict:
    """Keep what an agent's running instruction printed lately and push it to the job page.

    Only for an instruction leased to this agent and still running: another's, or one that
    ended, is refused (409) and the refusal recorded; at most one call per
    ``MIN_SPACING_SECONDS`` per instruction (429). Returns ``{"status": "accepted"}``."""
    instruction_id, chunks = _chunks(data)
    found = (
        Instruction.objects.filter(pk=instruction_id)
        .values_list("agent_id", "status", "site_id", "job_kind", "job_id", "timeout_seconds")
        .first()
    )
    if found is None:
        raise NotFound("No such instruction.")
    agent_id, status, site_id, job_kind, job_id, timeout = found
    if agent_id != agent.pk or status != JobStatus.RUNNING:
        reason = "not this agent's instruction" if agent_id != agent.pk else f"the instruction is {status}"
        history.record_refusal(
            agent,
            "output",
            Instruction(pk=instruction_id),
            reason=f"live output: {reason}",
            site_id=agent.asset.site_id,
        )
        raise Conflict(f"Live output refused: {reason}; only a running instruction of this agent takes it.")
    key, moment = _key(instruction_id), time.time()
    held = agent_limits.cached(lambda c: c.get(key)) or {}
    waited = moment - held.get("at", 0.0)
    if waited < MIN_SPACING_SECONDS:
        raise TooFrequent(
            f"At most one call per {LIVE_OUTPUT_SECONDS:g} s per instruction.",
            max(1, math.ceil(MIN_SPACING_SECONDS - waited)),
        )
    parts = {name: part for name, (offset, text) in chunks.items() if (part := _append(held, name, offset, text))}
    held["at"] = moment
    agent_limits.cached(lambda c: c.set(key, held, timeout + settings.RMM_LEASE_GRACE_SECONDS))
    if parts:
        events.publish(
            site_id,
            {
                "type": "job_output",
                "kind": job_kind,
                "id": str(job_id),
                "instruction": str(instruction_id),
                "site": str(site_id),
                **parts,
            },
        )
    return {"status": "accepted"}


def output_so_far(instruction_id) -> dict[str, Tail]:
    """Each stream's held tail of a running instruction (none before its first output)."""
    held = agent_limits.cached(lambda c: c.get(_key(instruction_id))) or {}
    return {name: Tail(text=held[name][1], total=held[name][0]) for name in LIVE_STREAMS if name in held}
