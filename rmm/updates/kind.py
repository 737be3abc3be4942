"""The "agent_update" job kind: one signed order to the agent to update itself.

The step's interpreter is ``agent_update`` and its content the order (version, the artefact's
URL, the signed manifest), covered by the instruction's signature and content hash. The agent
sends its result once the new version has checked in, or once it rolled back (docs/agent.md).
"""

from __future__ import annotations

import json

from django.conf import settings
from django.urls import reverse

from rmm.engine import registry
from rmm.updates import releases
from rmm.updates.models import UpdateJob
from rmm_agent.protocol import CAPABILITY_SELF_UPDATE

UPDATE_RESULT = "agent_update_result"


def render(job: UpdateJob) -> list[registry.InstructionSpec]:
    order = {
        "version": job.version,
        "url": reverse("agent-release", args=[job.sha256]),
        "manifest": job.manifest,
        "check_in_seconds": settings.RMM_AGENT_UPDATE_CHECK_IN_SECONDS,
    }
    return [
        registry.InstructionSpec(
            asset=job.asset,
            interpreter="agent_update",
            content=json.dumps(order, sort_keys=True, separators=(",", ":")),
            # waiting for what runs, downloading, and the new version's check-in
            timeout_seconds=3600,
            privileged=True,
        )
    ]


def prepare(*, version: str, requires_approval: bool = False) -> registry.NewJob:
    """An update names a published release; the requester may ask for each job's approval."""
    record = releases.find(str(version or ""))
    return registry.NewJob(
        fields={k: record[k] for k in ("version", "sha256", "size", "manifest")},
        requires_approval=bool(requires_approval),
        names={"version": record["version"]},
        created={"sha256": record["sha256"]},
    )


def evidence_document(job: UpdateJob, inst, stored, result: dict, late: bool) -> dict:
    return {
        "evidence_type": UPDATE_RESULT,
        "job": {"kind": "agent_update", "id": job.pk, "status": job.status, "status_reason": job.status_reason},
        "release": {"version": job.version, "sha256": job.sha256, "size": job.size, "manifest": job.manifest},
        "instruction": {"id": inst.pk, "payload": inst.payload, "signature": inst.signature, "key_id": inst.key_id},
        "authority": {"psa_task_id": job.psa_task_id, "psa_case_id": job.psa_task.case_id},
        "result": {
            "status": inst.status,  # the word the console and the reports show (states.status_word)
            "outcome": inst.outcome or inst.status,
            "exit_code": inst.exit_code,
            "reason": inst.reason,
            "hash": inst.result_hash or None,
            "late": late,
        },
    }


registry.register(
    registry.JobKind(
        name="agent_update",
        model=UpdateJob,
        prepare=prepare,
        render=render,
        evidence_type=UPDATE_RESULT,
        evidence_entity="agent_update_job",
        evidence_document=evidence_document,
        describe=lambda job: f"agent {job.version} on {job.asset.hostname}",
        select_related=("asset", "site", "psa_task__case", "requested_by", "decided_by"),
        capability=CAPABILITY_SELF_UPDATE,
    )
)
