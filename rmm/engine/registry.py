"""Job kinds register here; the engine dispatches every kind alike.

A domain app describes its kind once (in its AppConfig.ready) and never talks to agents.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import models


@dataclass(frozen=True)
class InstructionSpec:
    """A fully rendered step for one asset, before the engine signs it."""

    asset: Any
    interpreter: str
    content: str
    arguments: list[str] = field(default_factory=list)
    timeout_seconds: int = 300
    privileged: bool = False
    step: int = 0


@dataclass(frozen=True)
class JobKind:
    name: str
    model: type[models.Model]
    # job -> the instructions that carry it out (called when the job is queued)
    render: Callable[[Any], list[InstructionSpec]]
    # (job, instruction, result dict, actor) -> None: set the job status, store the domain
    # result and its evidence; called inside the engine's transaction.
    on_finished: Callable[[Any, Any, dict, Any], None]
    # (job, instruction, result dict, actor) -> the evidence id: store the domain result and its
    # evidence for a result that arrived after the instruction ended without one (the job's
    # status stays); called inside the engine's transaction.
    on_late_result: Callable[[Any, Any, dict, Any], Any]
    # job -> a short human description for the console and events
    describe: Callable[[Any], str]
    # job -> {"psa_case_id": ..., "psa_task_id": ...}: the upstream authority to tell when it ends
    authority: Callable[[Any], dict]
    # job -> why its authority no longer covers it, or None (re-checked when it is approved)
    authority_problem: Callable[[Any], str | None]
    # the API field that names the job's authority, for refusals
    authority_field: str
    # authority key ("psa_case_id", "psa_task_id") -> the job model's lookup for it: withdrawn
    # authority aborts the kind's queued jobs whose instructions are not yet issued
    authority_lookups: dict[str, str] = field(default_factory=dict)
    # relations the console and API load with each job (for describe and detail)
    select_related: tuple[str, ...] = ()
    # template included on the console's job page, rendered with ``job``
    detail_template: str = ""


_KINDS: dict[str, JobKind] = {}


def register(kind: JobKind) -> None:
    _KINDS[kind.name] = kind


def get(name: str) -> JobKind:
    return _KINDS[name]


def kind_of(job) -> JobKind:
    for kind in _KINDS.values():
        if isinstance(job, kind.model):
            return kind
    raise LookupError(f"{type(job).__name__} is not a registered job kind")


def all_kinds() -> list[JobKind]:
    return list(_KINDS.values())
