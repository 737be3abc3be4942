"""Artefacts an agent fetches for a step: the URL signed into its instruction, bound to the
agent, the instruction and the blob's hash, and the check of that URL when the agent calls it.

The URL's token is an HMAC (the server's secret key) over the agent, the instruction, the sha256
and an expiry (the instruction's ``not_after`` plus its timeout: it cannot run later). The token
alone is not enough: the caller must also be that agent (its credential), and the instruction
must still be running, not asked to stop, and name that blob (docs/security.md).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlencode

from django.utils.crypto import salted_hmac

from rmm.core.errors import Forbidden, NotFound
from rmm.engine import registry
from rmm.engine.models import Instruction
from rmm.engine.states import JobStatus
from rmm.history import services as history
from rmm.inventory.models import Agent

SALT = "rmm.engine.fetching.artefact"


def token(agent_id, instruction_id, sha256: str, expires: int) -> str:
    """The URL's proof that this server named this blob for this agent's instruction."""
    message = f"{agent_id}:{instruction_id}:{sha256}:{expires}"
    return salted_hmac(SALT, message, algorithm="sha256").hexdigest()


def url(agent_id, instruction_id, sha256: str, expires: int) -> str:
    """The path (on the server) the agent fetches one artefact from."""
    query = urlencode({"expires": expires, "token": token(agent_id, instruction_id, sha256, expires)})
    return f"/api/v1/agent/artefacts/{instruction_id}/{sha256}/?{query}"


def signed_entries(
    agent_id, instruction_id, artefacts: tuple[registry.Artefact, ...], expires: int
) -> tuple[list[dict], list[dict]]:
    """(what the signed payload lists, what the instruction row keeps) for a step's artefacts."""
    listed = [
        {
            "name": item.name,
            "sha256": item.sha256,
            "size": item.size,
            "url": url(agent_id, instruction_id, item.sha256, expires),
        }
        for item in artefacts
    ]
    kept = [{"name": item.name, "sha256": item.sha256, "size": item.size, "blob": item.blob} for item in artefacts]
    return listed, kept


@dataclass(frozen=True)
class Fetch:
    """An artefact the agent may fetch now."""

    blob: str
    size: int
    sha256: str


def check(agent: Agent, instruction_id: str, sha256: str, expires: str, given: str, now: datetime) -> Fetch:
    """What the agent may fetch under this URL, or :class:`Forbidden` (a token not made for this
    agent, instruction and blob, or expired; an instruction no longer running) or
    :class:`NotFound` (no such instruction of this agent naming that blob), each recorded as
    ``refused.artefact.fetch``. One query when allowed."""
    refusal = {"instruction_id": str(instruction_id)[:64], "sha256": str(sha256)[:64]}
    try:
        until = int(expires)
    except (TypeError, ValueError):
        until = -1
    if until < 0 or not hmac.compare_digest(token(agent.pk, instruction_id, sha256, until), str(given or "")):
        _refuse(agent, "the token was not made for this agent, instruction and artefact", refusal)
        raise Forbidden("The artefact URL is not valid for this agent.")
    if until < now.timestamp():
        _refuse(agent, "the artefact URL has expired", refusal)
        raise Forbidden("The artefact URL has expired.")
    inst = (
        Instruction.objects.filter(pk=instruction_id, agent=agent)
        .only("status", "abort_reason", "artefacts", "site_id")
        .first()
    )
    entry = next((item for item in (inst.artefacts if inst else []) if item.get("sha256") == sha256), None)
    if entry is None:
        _refuse(agent, "no instruction of this agent names this artefact", refusal)
        raise NotFound("No such artefact for this instruction.")
    if inst.status != JobStatus.RUNNING or inst.abort_reason:
        _refuse(agent, f"the instruction is not running (it is {inst.status})", refusal)
        raise Forbidden("The instruction is no longer running.")
    return Fetch(entry["blob"], int(entry["size"]), sha256)


def blob_missing(agent: Agent, instruction_id: str, fetch: Fetch) -> NotFound:
    """The store does not hold a blob a running instruction names: recorded, and a 404."""
    payload = {"instruction_id": str(instruction_id), "blob": fetch.blob}
    _refuse(agent, "the artefact is missing from the store", payload)
    return NotFound("The artefact is missing from the store.")


def _refuse(agent: Agent, reason: str, payload: dict) -> None:
    history.record_refusal(agent, "artefact.fetch", reason=reason, site_id=agent.asset.site_id, payload=payload)
