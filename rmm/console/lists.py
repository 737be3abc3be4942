"""The console's list pages, for every app: a django-filter form above a django-tables2 table,
sorted and paginated on the server; htmx swaps the table alone when a filter, the sort or the page
changes (docs/architecture.md, "The console's shared pieces").

A page is ``list_page(request, table_class, filterset, template)``: the filter set's ``qs`` is the
rows (a queryset of the caller's own sites), the table sorts and slices it, and its
``prepare_page`` loads what the page's records need in bulk, so a page costs the same number of
queries whatever the rows.
"""

from __future__ import annotations

import django_tables2 as tables
from django.http import HttpResponse
from django.shortcuts import render
from django.template.loader import get_template
from django_tables2.paginators import LazyPaginator

PER_PAGE = 50


class CellColumn(tables.TemplateColumn):
    """A column whose cells are a template rendered with ``record`` and ``value`` alone: a
    ``TemplateColumn`` renders each cell with the request, running every context processor (and
    its queries) once per cell."""

    def render(self, record, table, value, bound_column, **kwargs):
        return get_template(self.template_name).render({"record": record, "value": value})


class ListTable(tables.Table):
    """A console table: ``prepare_page(records)`` may load what the page's records show, at once."""

    class Meta:
        attrs = {"class": "list"}
        empty_text = "Nothing matches."

    def prepare_page(self, records: list) -> None:
        """Add to the page's records (in place) what they show beyond their own columns."""


def _paginate(request, table: ListTable, per_page: int, lazy: bool) -> None:
    options = {"per_page": per_page}
    if lazy:
        options["paginator_class"] = LazyPaginator  # no COUNT over the whole fleet
    tables.RequestConfig(request, paginate=options).configure(table)
    rows = list(table.page.object_list)  # the page's query, run once
    table.prepare_page([row.record for row in rows])
    table.page.object_list = rows


def paginate(request, table: ListTable, *, per_page: int = PER_PAGE, lazy: bool = False) -> None:
    """Sort and page ``table`` from the request as a list page does, for a list inside another page
    (an asset's jobs); render it with ``console/list.html``."""
    _paginate(request, table, per_page, lazy)


def list_page(
    request,
    table_class: type[ListTable],
    filterset,
    template: str,
    context: dict | None = None,
    *,
    per_page: int = PER_PAGE,
    lazy: bool = False,
    table_kwargs: dict | None = None,
    status: int = 200,
) -> HttpResponse:
    """The full page, or for an htmx request its list alone (``console/list.html``), answered with
    ``status`` (a form on the page that did not validate). A filter that does not validate answers
    400 with its errors beside the fields and no rows."""
    valid = filterset.is_valid()
    table = table_class(filterset.qs if valid else [], **(table_kwargs or {}))
    _paginate(request, table, per_page, lazy)
    htmx = getattr(request, "htmx", None)
    partial = bool(htmx) and not htmx.history_restore_request
    return render(
        request,
        "console/list.html" if partial else template,
        {"filter": filterset, "table": table, **(context or {})},
        status=status if valid else 400,
    )
