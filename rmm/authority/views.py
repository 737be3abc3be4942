"""The console's view of upstream authority: the PSA cases (and their tasks) of the caller's sites,
read-only, and the local authority page for installations with no PSA, which records a case and a
task through the PSA's own upserts (:func:`rmm.authority.services.record_local_authority`)."""

from __future__ import annotations

import django_filters
import django_tables2 as tables
from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count, QuerySet
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone

from rmm.access import roles as access
from rmm.authority import services
from rmm.authority.models import AuthorityStatus, PsaCase
from rmm.console import lists
from rmm.console.lists import ListTable
from rmm.core.errors import Forbidden, ServiceError
from rmm.history import services as history
from rmm.inventory.models import Site


def visible_cases(user) -> QuerySet[PsaCase]:
    """The cases of the user's sites, each with its site and number of tasks."""
    return (
        PsaCase.objects.filter(site__in=access.visible_sites(user))
        .select_related("site", "written_by")
        .annotate(task_count=Count("tasks"))
    )


class CaseFilter(django_filters.FilterSet):
    q = django_filters.CharFilter(
        label="Search", field_name="title", lookup_expr="icontains", widget=forms.TextInput(attrs={"type": "search"})
    )
    status = django_filters.ChoiceFilter(label="Status", choices=AuthorityStatus.choices, empty_label="any")
    site = django_filters.ModelChoiceFilter(
        label="Site", queryset=Site.objects.none(), to_field_name="name", empty_label="any"
    )

    def __init__(self, data, *, user):
        super().__init__(data, queryset=visible_cases(user))
        self.filters["site"].queryset = access.visible_sites(user)


class CaseTable(ListTable):
    title = tables.Column(
        verbose_name="Case", linkify=("authority:case", {"case_id": tables.A("pk")}), order_by=("title", "id")
    )
    status = tables.Column(verbose_name="Status", order_by=("status", "title", "id"))
    site = tables.Column(verbose_name="Site", accessor="site__name", order_by=("site__name", "title", "id"))
    expires_at = tables.DateTimeColumn(format="Y-m-d H:i", verbose_name="Expires", default="never")
    task_count = tables.Column(verbose_name="Tasks", orderable=False)
    updated_at = tables.DateTimeColumn(format="Y-m-d H:i", verbose_name="Updated", order_by=("updated_at", "id"))

    class Meta(ListTable.Meta):
        attrs = {"class": "list", "id": "cases"}
        order_by = ("-updated_at",)
        empty_text = "No PSA cases match."
        row_attrs = {"data-case-id": lambda record: record.pk}


@login_required
def case_list(request):
    filterset = CaseFilter(request.GET, user=request.user)
    context = {"nav": "authority", "may_record": services.LOCAL_ROLE in access.roles_of(request.user)}
    return lists.list_page(request, CaseTable, filterset, "authority/cases.html", context)


@login_required
def case_detail(request, case_id):
    """A case of the user's sites and its tasks, read-only: the PSA owns them."""
    case = visible_cases(request.user).filter(pk=case_id).first()
    if case is None:
        raise Http404
    return render(
        request,
        "authority/case.html",
        {
            "nav": "authority",
            "case": case,
            "tasks": case.tasks.select_related("written_by").order_by("created_at"),
            "now": timezone.now(),
        },
    )


class LocalAuthorityForm(forms.Form):
    site = forms.ModelChoiceField(queryset=Site.objects.none(), to_field_name="name", empty_label=None)
    case_title = forms.CharField(max_length=500, label="Case title", help_text="What the work is for.")
    task_title = forms.CharField(max_length=500, label="Task title", help_text="The piece of work jobs cite.")
    expires_at = forms.DateTimeField(
        required=False,
        label="Expires at (optional)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="After this moment the case and task authorise nothing.",
    )

    def __init__(self, user, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["site"].queryset = access.visible_sites(user).order_by("name")


@login_required
def local_authority(request):
    """Record an approved case and task where no PSA does it: the psa role only (refusal recorded)."""
    if services.LOCAL_ROLE not in access.roles_of(request.user):
        history.record_refusal(
            request.user, "psa_case.record_local", reason="only the psa role records local authority"
        )
        raise PermissionDenied("Only a person holding the psa role may record local authority.")
    form = LocalAuthorityForm(request.user, request.POST or None)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            data = form.cleaned_data
            try:
                task = services.record_local_authority(
                    request.user,
                    site_name=data["site"].name,
                    case_title=data["case_title"],
                    task_title=data["task_title"],
                    expires_at=data["expires_at"],
                )
            except Forbidden as exc:
                raise PermissionDenied(exc.detail) from None
            except ServiceError as exc:
                form.add_error(exc.field if exc.field in form.fields else None, exc.detail)
                status = exc.status_code
            else:
                messages.success(request, f"Case and task recorded locally: {task.case.title} / {task.title}.")
                return redirect("authority:case", case_id=task.case_id)
    return render(request, "authority/local.html", {"nav": "authority", "form": form}, status=status)
