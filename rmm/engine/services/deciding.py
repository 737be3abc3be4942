"""Deciding: who may act, and a second person's decision on a job that awaits approval (approve,
reject, or the approval's expiry). Approving re-checks authority and kill switches under the
history's lock, then queues the job through :mod:`rmm.engine.services.issuing`."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from rmm.access import roles as access
from rmm.core.errors import Conflict, Forbidden, InvalidInput
from rmm.engine import registry
from rmm.engine.services import issuing, kill_switches
from rmm.engine.services.transitions import transition_job
from rmm.engine.states import JobStatus
from rmm.history import services as history

S = JobStatus


def require_role(user, capability: str, action: str, subject=None, *, site_id=None) -> None:
    """Refuse, and record the refusal, when the caller's role lacks ``capability`` (Law 7)."""
    if not access.can(user, capability):
        told = capability.replace("_", " ")
        history.record_refusal(user, action, subject, reason=f"role may not {told}", site_id=site_id)
        raise Forbidden(f"Your role may not {told}.")


def check_four_eyes(obj, user, *, author_field: str, action: str) -> None:
    """Law 8: whoever wrote or requested something never decides it, by any path."""
    if getattr(obj, f"{author_field}_id") == user.pk:
        history.record_refusal(user, action, obj, reason="self-approval", site_id=getattr(obj, "site_id", None))
        raise Forbidden("You may not approve or reject your own work.")


def approve_job(job, user) -> None:
    """A second person lets a job that needs approval run.

    Authority and kill switches are checked once more inside the transaction that queues it,
    under the history's lock, with the job and its authority read again: a withdrawal or a switch
    that committed after the first check is seen, and one that commits later finds the job's
    instructions when it stops work (:func:`rmm.history.services.lock`)."""
    require_role(user, "approve", "job.approve", job, site_id=job.site_id)
    check_four_eyes(job, user, author_field="requested_by", action="job.approve")
    kind = registry.kind_of(job)
    # Law 1 holds when the work becomes executable too: the PSA may have withdrawn it meanwhile.
    _refuse_unauthorised(kind, job, user)
    for spec in kind.render(job):
        kill_switches.refuse_if_engaged(spec.asset, user, "job.approve", job)
    with history.refusals_recorded(), transaction.atomic():
        history.lock()
        current = kind.model.objects.select_related(*kind.select_related).get(pk=job.pk)
        _refuse_unauthorised(kind, current, user, under_lock=True)
        for spec in kind.render(current):
            kill_switches.refuse_if_engaged(spec.asset, user, "job.approve", job, under_lock=True)
        issuing.queue_job(job, user, decided_by=user, decided_at=timezone.now())


def _refuse_unauthorised(kind, job, user, *, under_lock: bool = False) -> None:
    problem = kind.authority_problem(job)
    if problem:
        refused = history.Refused(
            Conflict(f"No authority: {problem}.", field=kind.authority_field),
            user,
            "job.approve",
            job,
            reason=f"no authority: {problem}",
            site_id=job.site_id,
            payload={"authority": {k: str(v) for k, v in kind.authority(job).items()}},
        )
        if under_lock:
            raise refused
        history.record_refusal(user, "job.approve", job, **refused.refusal)
        raise refused.error


def reject_job(job, user, reason: str) -> None:
    """A second person refuses a job that awaits approval, with the reason."""
    require_role(user, "approve", "job.reject", job, site_id=job.site_id)
    check_four_eyes(job, user, author_field="requested_by", action="job.reject")
    if not (reason or "").strip():
        raise InvalidInput("A rejection needs a reason.", field="reason")
    with transaction.atomic():
        transition_job(job, S.REJECTED, user, reason=reason.strip(), decided_by=user, decided_at=timezone.now())


def expire_approvals(now: datetime | None = None) -> int:
    """Jobs left awaiting approval past the TTL become rejected, with the reason, by the system."""
    now = now or timezone.now()
    cutoff = now - timedelta(hours=settings.RMM_APPROVAL_TTL_HOURS)
    reason = f"approval expired after {settings.RMM_APPROVAL_TTL_HOURS} h"
    count = 0
    for kind in registry.all_kinds():
        for job in kind.model.objects.filter(status=S.AWAITING_APPROVAL, created_at__lt=cutoff)[:1000]:
            try:
                with transaction.atomic():
                    transition_job(job, S.REJECTED, "system", reason=reason, decided_at=now)
                count += 1
            except Conflict:
                continue  # decided meanwhile
    return count
