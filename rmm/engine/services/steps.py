"""Multi-step jobs: after one step of a job ends, which step runs next, or how the job ends.

A kind renders a job's steps in order (:class:`rmm.engine.registry.InstructionSpec`); the engine
issues step 0 when the job is queued and each later one only once the one before ended, as the
ended step's ``on_failure`` policy says. The job's status is the aggregate of its steps': it
succeeds when every step that is not a cleanup step succeeded, and otherwise ends as the first
that did not (a cleanup step's outcome is in its evidence, never in the job's status).
"""

from __future__ import annotations

from dataclasses import dataclass

from rmm.engine import registry
from rmm.engine.states import JobStatus
from rmm_agent.protocol import REBOOT_MODES, artefacts_problem

S = JobStatus
# An instruction that ended so stops its job whatever its policy: aborted work is stopped work,
# and a lost one may still be running on the endpoint.
STOPS_THE_JOB = frozenset({S.ABORTED, S.LOST})


@dataclass(frozen=True)
class After:
    """What follows a step's end: the step to issue next, or the job's final status and reason."""

    next_step: int | None
    status: str = ""
    reason: str = ""


def after_step(specs: list[registry.InstructionSpec], ended: dict[int, tuple[str, str]], step: int) -> After:
    """``ended``: step -> (status, reason) of every step of the job that has ended, ``step`` the
    one that just did."""
    status, reason = ended[step]
    spec = specs[step]
    if status in STOPS_THE_JOB:
        return After(None, status, _why(specs, step, status, reason))
    failed = status != S.SUCCEEDED
    if spec.cleanup:  # cleaning up after a failure: the remaining cleanup steps, then the end
        upcoming = _next(specs, step, cleanup=True)
    elif failed and spec.on_failure == registry.STOP:
        upcoming = None
    elif failed and spec.on_failure == registry.CLEANUP:
        upcoming = _next(specs, step, cleanup=True)
    else:
        upcoming = _next(specs, step, cleanup=False)
    if upcoming is not None:
        return After(upcoming)
    for number in sorted(ended):
        first_status, first_reason = ended[number]
        if not specs[number].cleanup and first_status != S.SUCCEEDED:
            return After(None, first_status, _why(specs, number, first_status, first_reason))
    return After(None, S.SUCCEEDED, reason if len(specs) == 1 else "")


def _next(specs: list[registry.InstructionSpec], step: int, *, cleanup: bool) -> int | None:
    return next((n for n in range(step + 1, len(specs)) if specs[n].cleanup == cleanup), None)


def _why(specs: list, step: int, status: str, reason: str) -> str:
    """A one-step job keeps its instruction's reason as it was; a longer one names the step."""
    if len(specs) == 1:
        return reason
    said = f"step {step + 1} of {len(specs)} {status}"
    return f"{said}: {reason}" if reason else said


def check(specs: list[registry.InstructionSpec]) -> None:
    """A kind's rendering is a programming contract: at least one step, known policies,
    usable artefacts."""
    if not specs:
        raise ValueError("a job must render at least one step")
    for spec in specs:
        if spec.on_failure not in registry.ON_FAILURE:
            raise ValueError(f"unknown on_failure policy {spec.on_failure!r}")
        problem = artefacts_problem([dict(vars(item), url="/") for item in spec.artefacts])
        if problem:
            raise ValueError(problem)
        if spec.reboot not in ("", *REBOOT_MODES):
            raise ValueError(f"unknown reboot {spec.reboot!r}")
    if specs[0].cleanup:
        raise ValueError("a job's first step cannot be a cleanup step")
