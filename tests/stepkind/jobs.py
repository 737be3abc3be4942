"""Creating test-only step jobs through the engine's creation service, as every kind's are."""

from __future__ import annotations

from rmm.engine import services as engine
from tests.stepkind.models import StepJob


def create_step_job(
    user,
    *,
    asset,
    task,
    steps=3,
    fail_step=None,
    on_failure="stop",
    requires_approval=False,
    found=None,
    reboot_step=None,
    artefact=None,
):
    job = engine.create_job(
        user,
        "step",
        asset_id=asset.pk,
        psa_task_id=task.pk,
        steps=steps,
        fail_step=fail_step,
        on_failure=on_failure,
        requires_approval=requires_approval,
        artefact=artefact,
        found=found,
        reboot_step=reboot_step,
    )
    return StepJob.objects.select_related("asset", "site", "psa_task__case").get(pk=job.pk)
