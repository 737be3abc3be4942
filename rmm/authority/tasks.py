"""Telling the PSA: when a job ends, POST its outcome and evidence to the PSA's webhook."""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.error
import urllib.request

from django.conf import settings

from evidence.models import RmmEvidence
from rmm.engine import registry
from rmm.history import services as history


def notify_psa(kind_name: str, job_id: str, late_result: dict | None = None) -> int | None:
    """One signed POST per finished job, and one per result that arrived after its job had ended
    (``late_result``, event ``job.late_result``). A failure is loud: recorded in the history and
    raised."""
    url = settings.RMM_PSA_WEBHOOK_URL
    if not url:
        return None
    kind = registry.get(kind_name)
    job = kind.model.objects.get(pk=job_id)
    evidence = RmmEvidence.objects.filter(related_id=job.pk).order_by("captured_at")
    listed = [{"id": str(e.pk), "type": e.evidence_type, "hash": e.hash} for e in evidence]
    message = {
        "event": "job.finished",
        "kind": kind.name,
        "job_id": str(job.pk),
        "status": job.status,
        "status_reason": job.status_reason,
        **{key: str(value) for key, value in kind.authority(job).items()},
        "evidence": listed,
    }
    if late_result is not None:
        message["event"] = "job.late_result"
        late = {key: value for key, value in late_result.items() if key != "evidence_id"}
        late["evidence"] = next((item for item in listed if item["id"] == late_result.get("evidence_id")), None)
        message["late_result"] = late
    body = json.dumps(message, sort_keys=True).encode()
    signature = hmac.new(settings.RMM_PSA_WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    if not url.startswith(("https://", "http://")):
        raise ValueError("RMM_PSA_WEBHOOK_URL must be an http(s) URL")
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "X-RMM-Signature": f"sha256={signature}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:  # noqa: S310
            status = response.status
    except (urllib.error.URLError, OSError) as exc:
        history.append("system", "psa.notify_failed", job, site_id=job.site_id, payload={"error": str(exc)[:500]})
        raise
    history.append("system", "psa.notified", job, site_id=job.site_id, payload={"http_status": status})
    return status
