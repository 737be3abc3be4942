"""The test-only "step" job kind: each step prints its number; one may be made to fail, and one
may name an artefact (a blob of the store), which it prints the hash and size of; step 0 may
report what it found as a structured result, and one step may ask for a reboot."""

from __future__ import annotations

import shlex

from rmm.core.text import display_text
from rmm.engine import registry
from rmm.engine.states import JobStatus
from rmm_agent.protocol import artefact_env_name
from tests.stepkind.models import StepJob, StepResult

STEP_RESULT = "step_result"


def _report_found(found: int) -> str:
    """Shell that writes the step's structured result: what it found."""
    return f'printf \'{{"found": {found}}}\' > "$RMM_RESULT_PATH"\n'


def render(job: StepJob) -> list[registry.InstructionSpec]:
    specs = [
        registry.InstructionSpec(
            asset=job.asset,
            interpreter="sh",
            content=f"echo 'step {n}'\n"
            + _uses_artefact(job, n)
            + (_report_found(job.found) if n == 0 and job.found is not None else "")
            + ("exit 1\n" if n == job.fail_step else ""),
            timeout_seconds=60,
            on_failure=job.on_failure,
            artefacts=_artefacts(job, n),
            reboot="now" if n == job.reboot_step else "",
        )
        for n in range(job.steps)
    ]
    if job.on_failure == registry.CLEANUP:
        specs.append(
            registry.InstructionSpec(asset=job.asset, interpreter="sh", content="echo 'cleanup'\n", cleanup=True)
        )
    return specs


def _artefacts(job: StepJob, step: int) -> tuple[registry.Artefact, ...]:
    named = job.artefact
    if not named or named["step"] != step:
        return ()
    return (registry.Artefact(named["name"], named["sha256"], named["size"], named["blob"]),)


def _uses_artefact(job: StepJob, step: int) -> str:
    """The artefact step's script: touch the marker, print the artefact's hash and size."""
    if not _artefacts(job, step):
        return ""
    variable = artefact_env_name(job.artefact["name"])
    marker = f"touch {shlex.quote(job.artefact['marker'])}\n" if job.artefact.get("marker") else ""
    return marker + f'sha256sum < "${variable}" | cut -c1-64\nwc -c < "${variable}"\n'


def store_result(job: StepJob, inst, result: dict) -> StepResult:
    return StepResult.objects.create(
        job=job,
        step=inst.step,
        exit_code=result.get("exit_code"),
        stdout=display_text(result["stdout"])[0],
        hash=inst.result_hash,
        structured=result.get("structured"),
    )


def judge(inst, result: dict) -> tuple[str, str] | None:
    """A step whose structured result found something failed (a scan that found what it looks for)."""
    document = result.get("structured")
    found = document.get("found") if isinstance(document, dict) else None
    if isinstance(found, int) and found > 0:
        return JobStatus.FAILED, f"found {found}"
    return None


def evidence_document(job: StepJob, inst, stored: StepResult | None, result: dict, late: bool) -> dict:
    return {
        "evidence_type": STEP_RESULT,
        "job": {"kind": "step", "id": job.pk, "status": job.status, "status_reason": job.status_reason},
        "step": inst.step,
        "instruction": {"id": inst.pk, "payload": inst.payload, "signature": inst.signature, "key_id": inst.key_id},
        "authority": {"psa_task_id": job.psa_task_id, "psa_case_id": job.psa_task.case_id},
        "result": {
            "status": inst.status,
            "outcome": inst.outcome or inst.status,
            "exit_code": inst.exit_code,
            "reason": inst.reason,
            "hash": inst.result_hash or None,
            "stdout": stored.stdout if stored else None,
            "structured": inst.structured,
            "late": late,
        },
    }


def prepare(
    *,
    steps: int = 3,
    fail_step: int | None = None,
    on_failure: str = registry.STOP,
    requires_approval=False,
    found: int | None = None,
    reboot_step: int | None = None,
    artefact: dict | None = None,
):
    """The step kind's parameters: how many steps, which one fails, what follows a failure, what
    step 0 reports found, which step reboots, and the artefact one step names."""
    return registry.NewJob(
        fields={
            "steps": steps,
            "fail_step": fail_step,
            "on_failure": on_failure,
            "found": found,
            "reboot_step": reboot_step,
            "artefact": artefact,
        },
        requires_approval=requires_approval,
        names={"steps": str(steps)},
    )


registry.register(
    registry.JobKind(
        name="step",
        model=StepJob,
        prepare=prepare,
        render=render,
        evidence_type=STEP_RESULT,
        evidence_entity="step_job",
        evidence_document=evidence_document,
        store_result=store_result,
        judge=judge,
        describe=lambda job: f"{job.steps} steps on {job.asset.hostname}",
        select_related=("asset", "site", "psa_task__case", "requested_by", "decided_by"),
    )
)
