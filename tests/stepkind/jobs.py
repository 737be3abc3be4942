"""Creating test-only step jobs: rows written and issued through the engine (the engine's creation
service, once it exists, takes this helper's place)."""

from __future__ import annotations

from django.db import transaction

from rmm.engine import services as engine
from rmm.engine.states import JobStatus
from rmm.history import services as history
from tests.stepkind.models import StepJob


def create_step_job(user, *, asset, task, steps=3, fail_step=None, on_failure="stop", requires_approval=False):
    status = JobStatus.AWAITING_APPROVAL if requires_approval else JobStatus.QUEUED
    with transaction.atomic():
        job = StepJob.objects.create(
            status=status,
            site_id=asset.site_id,
            requested_by=user,
            asset=asset,
            psa_task=task,
            steps=steps,
            fail_step=fail_step,
            on_failure=on_failure,
        )
        history.append(user, "job.created", job, site_id=asset.site_id, payload={"kind": "step", "status": status})
        if status == JobStatus.QUEUED:
            engine.issue_instructions(job, user)
    return StepJob.objects.select_related("asset", "site", "psa_task__case").get(pk=job.pk)
