"""The console's job list at fleet scale: every kind, the sites the user may see, one row per batch
(a progress bar that opens to its jobs), filtered, searched, sorted and paginated on the server
in a constant number of queries per page (rmm.engine.services.listing)."""

from __future__ import annotations

import uuid
from datetime import datetime, time, timedelta

import django_filters
import django_tables2 as tables
from django import forms
from django.utils import timezone

from rmm.console.lists import CellColumn, ListTable
from rmm.engine import registry
from rmm.engine.models import Batch
from rmm.engine.services import batches, listing
from rmm.engine.states import JobStatus

DATE = forms.DateInput(attrs={"type": "date"})


def _day_start(day) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


class JobFilter(django_filters.FilterSet):
    """The job list's filters. They apply to each kind's table before the union, so the rows are
    the engine's (``listing.job_rows``) for the cleaned values, not a filter of a queryset."""

    q = django_filters.CharFilter(
        label="Search",
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "hostname, requester or job id"}),
    )
    status = django_filters.ChoiceFilter(label="Status", choices=JobStatus.choices, empty_label="any")
    kind = django_filters.ChoiceFilter(label="Kind", choices=[], empty_label="any")
    asset = django_filters.CharFilter(label="Asset (hostname or id)")
    requester = django_filters.CharFilter(label="Requested by")
    psa_case = django_filters.UUIDFilter(label="PSA case")
    psa_task = django_filters.UUIDFilter(label="PSA task")
    batch = django_filters.UUIDFilter(label="Batch")
    created_from = django_filters.DateFilter(
        label="Created on or after", widget=forms.DateInput(attrs={"type": "date"})
    )
    created_to = django_filters.DateFilter(label="Created on or before", widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, data, *, user):
        self.user = user
        super().__init__(data, queryset=listing.job_rows(user, listing.JobQuery()))
        self.filters["kind"].extra["choices"] = [(k.name, k.name) for k in registry.all_kinds()]

    def query(self) -> listing.JobQuery:
        value = self.form.cleaned_data
        asset = (value.get("asset") or "").strip()
        try:
            asset_id = uuid.UUID(asset)
        except ValueError:
            asset_id = None
        created_to = value.get("created_to")
        return listing.JobQuery(
            kind=value.get("kind") or "",
            status=value.get("status") or "",
            asset=asset_id,
            hostname="" if asset_id else asset,
            requester=(value.get("requester") or "").strip(),
            psa_case=value.get("psa_case"),
            psa_task=value.get("psa_task"),
            batch=value.get("batch"),
            created_from=_day_start(value["created_from"]) if value.get("created_from") else None,
            created_before=_day_start(created_to + timedelta(days=1)) if created_to else None,
            search=(value.get("q") or "").strip(),
            group_batches=True,
        )

    def filter_queryset(self, queryset):
        return listing.job_rows(self.user, self.query())


class JobTable(ListTable):
    kind = tables.Column(verbose_name="Kind", order_by=("kind", "created", "id"))
    job = CellColumn(template_name="console/job_cell.html", verbose_name="Job", orderable=False, empty_values=())
    hostname = CellColumn(
        template_name="console/asset_cell.html", verbose_name="Asset", order_by=("hostname", "created", "id")
    )
    status = tables.TemplateColumn(
        '{% load console_tags %}<span class="status status-{{ value }}" data-field="status">'
        "{{ value|status_word }}</span>",
        verbose_name="Status",
        order_by=("status", "created", "id"),
    )
    requester = tables.Column(verbose_name="Requested by", order_by=("requester", "created", "id"))
    created = tables.DateTimeColumn(format="Y-m-d H:i:s", verbose_name="Created", order_by=("created", "id"))
    completed = tables.TemplateColumn(
        '<span data-field="completed_at">{{ value|date:"Y-m-d H:i:s" }}</span>',
        verbose_name="Completed",
        order_by=("completed", "created", "id"),
        empty_values=(),
    )

    class Meta(ListTable.Meta):
        attrs = {"class": "list jobs", "id": "jobs"}
        order_by = ("-created",)
        empty_text = "No jobs match."
        row_attrs = {
            "data-job-id": lambda record: "" if record["is_batch"] else record["id"],
            "data-batch-id": lambda record: record["id"] if record["is_batch"] else "",
        }

    def prepare_page(self, records: list) -> None:
        """The page's jobs (one query per kind on it), its batches and their progress (one query
        for the batches, one per kind among them)."""
        rows = records
        jobs = listing.jobs_of_rows(rows)
        batch_ids = [row["id"] for row in rows if row["is_batch"]]
        found = Batch.objects.filter(pk__in=batch_ids) if batch_ids else []
        by_id = {str(batch.pk): batch for batch in found}
        progress = batches.totals(by_id.values())
        for row in rows:
            key = str(row["id"])
            job = jobs.get(key)
            row["description"] = registry.get(row["kind"]).describe(job) if job is not None else ""
            batch = by_id.get(key)
            row["size"] = sum(batch.ring_sizes) if batch else 0
            row["progress"] = progress.get(key)
