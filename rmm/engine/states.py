"""Job and instruction statuses, their groups, and the one table of allowed transitions."""

from django.db import models


class JobStatus(models.TextChoices):
    AWAITING_APPROVAL = "awaiting_approval"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    ABORTED = "aborted"
    LOST = "lost"
    REJECTED = "rejected"


S = JobStatus
ACTIVE = frozenset({S.AWAITING_APPROVAL, S.QUEUED, S.RUNNING})
FINAL = frozenset({S.SUCCEEDED, S.FAILED, S.TIMED_OUT, S.ABORTED, S.LOST, S.REJECTED})

# from-status -> the statuses it may move to. Jobs and instructions share it.
TRANSITIONS: dict[str, frozenset[str]] = {
    S.AWAITING_APPROVAL: frozenset({S.QUEUED, S.REJECTED, S.ABORTED}),
    S.QUEUED: frozenset({S.RUNNING, S.ABORTED, S.LOST}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.TIMED_OUT, S.ABORTED, S.LOST}),
}
for _final in FINAL:
    TRANSITIONS[_final] = frozenset()


def sources_of(target: str) -> frozenset[str]:
    """The statuses from which ``target`` may be reached (for conditional updates)."""
    return frozenset(src for src, targets in TRANSITIONS.items() if target in targets)


# What an agent's reported outcome means for the instruction.
def status_for_outcome(outcome: str, exit_code: int | None) -> str:
    if outcome == "completed":
        return S.SUCCEEDED if exit_code == 0 else S.FAILED
    if outcome == "timed_out":
        return S.TIMED_OUT
    if outcome == "aborted":
        return S.ABORTED
    return S.FAILED  # refused by the agent, or could not start


def status_word(status: str | None, *, outcome: str | None = None, exit_code: int | None = None) -> str:
    """The one word people read for how a job or an instruction stands, wherever they read it: the
    console's lists and job page, the API's ``status`` and the evidence reports (CSV, HTML, PDF).
    It is the status itself; given none (an evidence document written before documents carried
    it), the status the agent's outcome means. Never the agent's raw outcome: a script that
    "completed" with exit 3 "failed"."""
    if status:
        return str(status)
    return status_for_outcome(outcome or "", exit_code)
