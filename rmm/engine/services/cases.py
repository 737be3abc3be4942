"""Telling the PSA that a case's work is done: ``case.may_close`` once every job of every kind
under the case has reached a final status (docs/psa-integration.md)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from django.db.models import Count

from rmm.authority.models import PsaCase
from rmm.engine import registry
from rmm.engine.states import FINAL, JobStatus
from rmm.history import services as history
from rmm.outbox import services as outbox

NOT_FINAL = sorted(set(JobStatus) - FINAL)

EVENT = "case.may_close"

# Work under a case that is no job (a vulnerability finding awaiting its verification) holds the
# case open too: the app that owns it registers a check, case id -> whether some is still open.
_open_work: list[Callable[[object], bool]] = []


def hold_case_while(check: Callable[[object], bool]) -> None:
    """Register ``check`` (in an AppConfig.ready): while it says so, the case is not told it may close."""
    if check not in _open_work:
        _open_work.append(check)


def case_has_open_work(case_id) -> bool:
    """Unfinished jobs of any kind, or other open work an app registered."""
    return case_has_unfinished_jobs(case_id) or any(check(case_id) for check in _open_work)


def _lookups() -> list:
    """Each kind whose jobs cite a PSA case, with its lookup for the case."""
    kinds = registry.all_kinds()
    return [(kind, kind.authority_lookups["psa_case_id"]) for kind in kinds if "psa_case_id" in kind.authority_lookups]


def case_has_unfinished_jobs(case_id) -> bool:
    """Whether any job of any kind under the case is not final: an EXISTS per kind that stops at
    the first such job, so a case of thousands of jobs costs little until its last ones end."""
    return any(
        kind.model.objects.filter(**{lookup: case_id}, status__in=NOT_FINAL).exists() for kind, lookup in _lookups()
    )


def jobs_of_case(case_id) -> Counter:
    """How many jobs of every kind under the case are in each status: one query per kind."""
    counts: Counter = Counter()
    for kind, lookup in _lookups():
        rows = kind.model.objects.filter(**{lookup: case_id}).values_list("status").annotate(n=Count("pk"))
        counts.update(dict(rows.order_by()))
    return counts


def after_jobs_ended(kind: registry.JobKind, job_ids: Iterable) -> int:
    """Call after jobs of ``kind`` ended, in the same transaction. It reads under the history's
    lock, so of two jobs ending at once, the second to take it sees the first ended and exactly
    one of them tells (their history may be appended later: history.deferred). Nothing at all is
    read unless an endpoint hears ``case.may_close``. Returns how many cases were told."""
    job_ids = list(job_ids)
    lookup = kind.authority_lookups.get("psa_case_id")
    if not job_ids or not lookup or not outbox.heard(EVENT):
        return 0
    history.lock()
    return tell_if_done(set(kind.model.objects.filter(pk__in=job_ids).values_list(lookup, flat=True)))


def tell_if_done(case_ids: Iterable, extra: dict | None = None) -> int:
    """``case.may_close`` for each of these cases with no open work left (``extra`` added to its
    data); call inside the transaction that ended the work, under the history's lock."""
    told = []
    for case in PsaCase.objects.filter(pk__in=set(case_ids)).only("pk", "title", "site_id"):
        if case_has_open_work(case.pk):
            continue
        counts = jobs_of_case(case.pk)
        data = {
            "psa_case_id": str(case.pk),
            "title": case.title,
            "site": str(case.site_id),
            "jobs": dict(sorted(counts.items())),
            "jobs_total": sum(counts.values()),
            **(extra or {}),
        }
        told.append(outbox.Emitted(EVENT, PsaCase._meta.label_lower, str(case.pk), case.site_id, data))
    return outbox.emit_many(told)
