"""Every job of every kind as one list: the rows of ``GET /api/v1/jobs/`` and the console's job list.

Each kind's table is filtered on its own and the parts are joined with ``UNION ALL``, so a page
is one query whatever the number of jobs; the console then loads the page's jobs per kind
(:func:`jobs_of_rows`) and its batches' progress (:func:`rmm.engine.services.batches.totals`).
With ``group_batches`` a batch is one row (``is_batch``) instead of its jobs: the console's view
of a fleet, where a batch of 10,000 jobs would otherwise be 10,000 rows.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth import get_user_model
from django.contrib.postgres.expressions import ArraySubquery
from django.db import connection
from django.db.models import BooleanField, CharField, DateTimeField, F, Func, OuterRef, Q, QuerySet, UUIDField, Value

from rmm.access import roles as access
from rmm.engine import registry
from rmm.engine.models import Batch
from rmm.inventory.models import Asset

# The columns of every row, in the order every part selects them (the union pairs them by
# position); named apart from the models' own fields so that each can be an annotation.
COLUMNS = (
    "id",
    "status",
    "asset_ref",
    "task_ref",
    "batch_ref",
    "created",
    "completed",
    "kind",
    "case_ref",
    "site_name",
    "requester",
    "hostname",
    "is_batch",
)


@dataclass(frozen=True)
class JobQuery:
    """What the caller asks for; every field empty: everything it may see."""

    kind: str = ""
    status: str = ""
    asset: uuid.UUID | None = None
    hostname: str = ""  # the asset's hostname, exactly (hostnames are not unique)
    requester: str = ""  # a username, exactly
    psa_case: uuid.UUID | None = None
    psa_task: uuid.UUID | None = None
    batch: uuid.UUID | None = None
    created_from: datetime | None = None
    created_before: datetime | None = None
    search: str = ""  # part of the asset's hostname or the requester's name, or a job's id
    group_batches: bool = False

    @property
    def looks_inside_batches(self) -> bool:
        """A filter on what only jobs have: batches are then listed as their jobs."""
        return bool(
            self.status or self.asset or self.hostname or self.psa_case or self.psa_task or self.batch or self.search
        )


# A search's matching assets (or users) are passed to the jobs' query as ids up to this many, so
# that the database reads the few matching jobs through their index; beyond it so many match that
# the newest jobs are found fastest by date, and they stay a subquery.
SEARCH_IDS = 1000


@dataclass(frozen=True)
class _Matches:
    """What a search matches besides a job's id: requesters and assets (ids or a subquery)."""

    users: list | QuerySet
    assets: list | QuerySet


def _ids(rows: QuerySet) -> list | QuerySet:
    found = list(rows.values_list("pk", flat=True)[: SEARCH_IDS + 1])
    return found if len(found) <= SEARCH_IDS else rows.values("pk")


def _matches(text: str, sites) -> _Matches:
    """Two queries, once for every part: a plan over ``LIKE`` joined to a million jobs is the
    planner's guess (it read every job of a requester to find 51); a list of ids is not."""
    return _Matches(
        users=_ids(get_user_model().objects.filter(username__icontains=text)),
        assets=_ids(Asset.objects.filter(site__in=sites, hostname__icontains=text)),
    )


def _search(text: str, matches: _Matches, *, batch: bool) -> Q:
    found = Q(requested_by_id__in=matches.users)
    if not batch:
        found |= Q(asset_id__in=matches.assets)
    with contextlib.suppress(ValueError):
        found |= Q(pk=uuid.UUID(text))
    return found


def _common(rows: QuerySet, query: JobQuery, matches: _Matches | None, *, batch: bool) -> QuerySet:
    if query.requester:
        rows = rows.filter(requested_by__username=query.requester)
    if query.created_from:
        rows = rows.filter(created_at__gte=query.created_from)
    if query.created_before:
        rows = rows.filter(created_at__lt=query.created_before)
    if matches is not None:
        rows = rows.filter(_search(query.search, matches, batch=batch))
    return rows


@dataclass(frozen=True)
class _Part:
    """One table's rows (a kind's jobs, or the batches), filtered, and the expressions of its
    :data:`COLUMNS` besides ``id`` and ``status`` (its own fields)."""

    rows: QuerySet
    columns: dict

    def select(self, rows: QuerySet) -> QuerySet:
        """``rows`` (this part's, filtered further) as dicts of :data:`COLUMNS`."""
        return rows.order_by().values("id", "status").annotate(**self.columns)


def _job_part(kind, sites, query: JobQuery, matches: _Matches | None) -> _Part:
    rows = _common(kind.model.objects.filter(site__in=sites), query, matches, batch=False)
    for value, lookup in (
        (query.status, "status"),
        (query.asset, "asset_id"),
        (query.hostname, "asset__hostname"),
        (query.psa_task, "psa_task_id"),
        (query.psa_case, "psa_task__case_id"),
        (query.batch, "batch_id"),
    ):
        if value:
            rows = rows.filter(**{lookup: value})
    if query.group_batches and not query.looks_inside_batches:
        rows = rows.filter(batch__isnull=True)
    return _Part(
        rows,
        {
            "asset_ref": F("asset_id"),
            "task_ref": F("psa_task_id"),
            "batch_ref": F("batch_id"),
            "created": F("created_at"),
            "completed": F("completed_at"),
            "kind": Value(kind.name, output_field=CharField()),
            "case_ref": F("psa_task__case_id"),
            "site_name": F("site__name"),
            "requester": F("requested_by__username"),
            "hostname": F("asset__hostname"),
            "is_batch": Value(False, output_field=BooleanField()),
        },
    )


def _batch_part(sites, query: JobQuery, matches: _Matches | None) -> _Part:
    rows = _common(Batch.objects.filter(site__in=sites), query, matches, batch=True)
    if query.kind:
        rows = rows.filter(job_kind=query.kind)
    return _Part(
        rows,
        {
            "asset_ref": Value(None, output_field=UUIDField()),
            "task_ref": Value(None, output_field=UUIDField()),
            "batch_ref": F("id"),
            "created": F("created_at"),
            "completed": Value(None, output_field=DateTimeField()),
            "kind": F("job_kind"),
            "case_ref": Value(None, output_field=UUIDField()),
            "site_name": F("site__name"),
            "requester": F("requested_by__username"),
            "hostname": Value(None, output_field=CharField()),
            "is_batch": Value(True, output_field=BooleanField()),
        },
    )


NEWEST_FIRST = ("-created", "-id")


def _first_of_each_requester(part: _Part, ordering: tuple[str, ...], stop: int) -> QuerySet:
    """The ids of every requester's first ``stop`` rows of ``part`` in ``ordering``, among which are
    the part's first ``stop`` rows sorted by requester and then ``ordering``. The username is in
    another table, so no index of the jobs gives that sort (PostgreSQL sorted every job); each
    requester's rows come in order from the ``(requested_by, created_at, id)`` index, one short
    index scan per user."""
    used = {name.lstrip("-") for name in ordering} & part.columns.keys()
    first = (
        part.rows.alias(**{name: part.columns[name] for name in used})
        .filter(requested_by_id=OuterRef("pk"))
        .order_by(*ordering)
        .values("id")[:stop]
    )
    return get_user_model().objects.values(job=Func(ArraySubquery(first), function="unnest", output_field=UUIDField()))


class JobRows:
    """The rows of every part (each kind's table, the batches) as one sorted list, read a slice at a
    time in one query. A slice sorts and cuts each part to the slice's end *before* the union, so
    that a page of a million jobs reads the first rows of each part's index instead of sorting
    every job (on databases that allow ``LIMIT`` inside a ``UNION``: PostgreSQL, not SQLite).
    Sorted by requester, a part's slice is read from each requester's first rows
    (:func:`_first_of_each_requester`, PostgreSQL).

    It answers what a queryset answers to django-tables2, django-filter and DRF's pagination:
    ``order_by`` (any of :data:`COLUMNS`), slices, ``count``, iteration."""

    ordered = True  # for Django's Paginator

    def __init__(self, parts: list[_Part], ordering: tuple[str, ...] = NEWEST_FIRST):
        self.parts = parts
        self.ordering = ordering
        self.model = parts[0].rows.model

    def order_by(self, *fields: str) -> JobRows:
        return JobRows(self.parts, tuple(fields) or NEWEST_FIRST)

    def all(self) -> JobRows:
        return self

    def _part(self, part: _Part, stop: int | None) -> QuerySet:
        rows = part.rows
        if stop is not None and self.ordering[0] in ("requester", "-requester") and connection.vendor == "postgresql":
            rows = rows.filter(pk__in=_first_of_each_requester(part, self.ordering[1:], stop))
        return part.select(rows).order_by(*self.ordering)

    def _rows(self, stop: int | None) -> QuerySet:
        first, *rest = self.parts
        if not rest:
            return self._part(first, stop)
        if stop is not None and connection.features.supports_slicing_ordering_in_compound:
            first, *rest = (self._part(part, stop)[:stop] for part in self.parts)
        else:
            first, *rest = (part.select(part.rows) for part in self.parts)
        return first.union(*rest, all=True).order_by(*self.ordering)

    def __getitem__(self, key):
        if isinstance(key, slice):
            return self._rows(key.stop)[key]
        return self._rows(key + 1)[key]

    def __iter__(self):
        return iter(self._rows(None))

    def __len__(self) -> int:
        return self.count()

    def count(self, most: int | None = None) -> int:
        """How many rows, counting no further than ``most``: each part is cut to it before the
        union (on PostgreSQL), so that a count of 10,000 reads 10,000 index entries per part,
        not a million jobs."""
        first, *rest = (part.rows.order_by().values("pk") for part in self.parts)
        if most is not None and rest and connection.features.supports_slicing_ordering_in_compound:
            first, *rest = (part[:most] for part in (first, *rest))
        rows = first.union(*rest, all=True) if rest else first
        return (rows if most is None else rows[:most]).count()


def job_rows(user, query: JobQuery) -> JobRows:
    """The rows (dicts of :data:`COLUMNS`) the user may see, newest first; ``order_by`` any column
    to sort them otherwise."""
    sites = access.visible_sites(user)
    matches = _matches(query.search, sites) if query.search else None
    parts = [_job_part(kind, sites, query, matches) for kind in registry.all_kinds() if query.kind in ("", kind.name)]
    if query.group_batches and not query.looks_inside_batches:
        parts.append(_batch_part(sites, query, matches))
    return JobRows(parts)


def jobs_of_rows(rows: list[dict]) -> dict[str, object]:
    """The job objects of a page of rows, by id: one query per kind on the page (each with what its
    kind's ``describe`` reads), however long the page."""
    ids: dict[str, list] = {}
    for row in rows:
        if not row["is_batch"]:
            ids.setdefault(row["kind"], []).append(row["id"])
    jobs = {}
    for name, wanted in ids.items():
        kind = registry.get(name)
        for job in kind.model.objects.filter(pk__in=wanted).select_related(*kind.select_related):
            jobs[str(job.pk)] = job
    return jobs
