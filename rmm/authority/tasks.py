"""What the PSA is told: the bodies of the engine's job events, sent through the outbox
(rmm/outbox) to every endpoint that hears them, the PSA's among them."""

from __future__ import annotations

from rmm.engine import registry


def _job(event):
    kind = registry.get(event.data["kind"])
    return kind, kind.model.objects.get(pk=event.subject_id)


def job_finished(event) -> dict:
    """``job.finished``: a job reached a final status; its outcome, authority and evidence."""
    kind, job = _job(event)
    return {
        "kind": kind.name,
        "job_id": str(job.pk),
        "status": job.status,
        "status_reason": job.status_reason,
        **{key: str(value) for key, value in kind.authority(job).items()},
        "evidence": registry.evidence_of(job.pk),
    }


def job_late_result(event) -> dict:
    """``job.late_result``: a result that arrived after its job had ended, kept with its evidence."""
    body = job_finished(event)
    late = {key: value for key, value in event.data["late_result"].items() if key != "evidence_id"}
    wanted = event.data["late_result"].get("evidence_id")
    late["evidence"] = next((item for item in body["evidence"] if item["id"] == wanted), None)
    body["late_result"] = late
    return body
