"""The console's compliance pages: the fleet's compliance per profile and site with the sites'
assignments (status, why, newest and next audit), and the audits running now (each of the caller's
sites only); an asset's assignments and items are a panel on its page
(:func:`profiles.compliance.asset_panel`, registered in ``apps.py``). Audits are asked for here
through the same service as the API's."""

from __future__ import annotations

import uuid

import django_filters
import django_tables2 as tables
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.http import Http404
from django.middleware.csrf import get_token
from django.shortcuts import redirect
from django.template.loader import get_template
from django.utils.html import format_html
from django.utils.timezone import localtime
from django.views.decorators.http import require_POST

from profiles import audits, compliance
from profiles.models import ConfigurationAuditJob, ConfigurationObservation, ConfigurationProfile
from rmm.access import roles as access
from rmm.console import lists
from rmm.console.lists import ListTable
from rmm.core.errors import NotFound, ServiceError
from rmm.engine.states import ACTIVE, JobStatus, status_word


def _sites(request):
    return access.visible_sites(request.user)


class ComplianceFilter(django_filters.FilterSet):
    site = django_filters.ModelChoiceFilter(label="Site", field_name="asset__site", queryset=_sites, empty_label="any")
    profile = django_filters.ModelChoiceFilter(
        label="Profile",
        field_name="profile_revision__profile",
        queryset=ConfigurationProfile.objects.order_by("name"),
        empty_label="any",
    )

    class Meta:
        model = ConfigurationObservation
        fields = ["site", "profile"]

    @property
    def qs(self):
        """The readings of the caller's sites, filtered, grouped per profile and site."""
        chosen = self.form.cleaned_data if self.is_valid() else {}
        return compliance.summary(
            access.visible_sites(self.request.user), site=chosen.get("site"), profile=chosen.get("profile")
        )


class ComplianceTable(ListTable):
    profile_name = tables.Column(verbose_name="Profile")
    site_name = tables.Column(verbose_name="Site")
    percent = tables.Column(verbose_name="Compliant")
    compliant_count = tables.Column(verbose_name="Complying readings")
    non_compliant_count = tables.Column(verbose_name="Drifted")
    error_count = tables.Column(verbose_name="Unreadable")
    observed = tables.Column(verbose_name="Readings")

    class Meta(ListTable.Meta):
        attrs = {"class": "list", "id": "fleet-compliance"}
        order_by = ("profile_name", "site_name")
        empty_text = "No profile has been audited on your sites yet."
        row_attrs = {"data-profile": lambda record: record["profile_id"], "data-site": lambda record: record["site_id"]}

    def render_percent(self, value):
        return f"{value:.1f} %"


class AssignmentTable(ListTable):
    """The assignments of the caller's sites, whatever their status: a stopped one says why."""

    profile = tables.Column(verbose_name="Profile", accessor="profile__name", order_by=("profile__name", "-created_at"))
    target = tables.Column(verbose_name="Assigned to", empty_values=(), orderable=False)
    status = tables.Column(verbose_name="Status")
    newest_audit = tables.Column(verbose_name="Last audit", empty_values=(), orderable=False)
    next_audit = tables.Column(verbose_name="Next audit", empty_values=(), orderable=False)
    action = tables.Column(verbose_name="", empty_values=(), orderable=False)

    class Meta(ListTable.Meta):
        attrs = {"class": "list", "id": "profile-assignments"}
        order_by = ("profile",)
        empty_text = "No profile is assigned on your sites."
        row_attrs = {"data-assignment": lambda record: record.pk, "data-status": lambda record: record.status}

    def prepare_page(self, records: list) -> None:
        self.rows = {row.assignment.pk: row for row in compliance.assignment_rows(records)}

    def render_target(self, record):
        if record.site_id:
            return format_html("site {} (each of its assets)", record.site.name)
        asset = record.asset
        return format_html('<a href="/console/assets/{}/">{}</a> ({})', asset.pk, asset.hostname, asset.site.name)

    def render_status(self, record):
        if not record.status_reason:
            return record.get_status_display()
        return format_html(
            '{}<br><span class="muted" data-field="reason">{}</span>', record.get_status_display(), record.status_reason
        )

    def render_newest_audit(self, record):
        job = self.rows[record.pk].newest_audit
        if job is None:
            return "never"
        return format_html(
            '<a href="/console/jobs/profile_audit/{}/">{}</a> {}',
            job.pk,
            f"{localtime(job.created_at):%Y-%m-%d %H:%M:%S}",
            status_word(job.status),
        )

    def render_next_audit(self, record):
        row = self.rows[record.pk]
        if not row.live:
            return "none: its schedule stopped"
        if row.next_audit_at is None:
            return f"each asset in its own slot of every {record.audit_interval_seconds} s"
        return f"{localtime(row.next_audit_at):%Y-%m-%d %H:%M:%S}"

    def render_action(self, record):
        if not self.rows[record.pk].live or not access.can(self.request.user, "request_jobs"):
            return ""
        form = get_template("profiles/audit_form.html")
        return form.render({"assignment": record, "csrf_token": get_token(self.request)})


def _assignments(request, filterset: ComplianceFilter):
    """The assignments of the caller's sites that the page's filters choose (none when they do not
    validate), each with its newest audit."""
    if not filterset.is_valid():
        return audits.visible_assignments(request.user).none()
    chosen = filterset.form.cleaned_data
    found = audits.visible_assignments(request.user).select_related("profile", "asset__site", "site")
    if chosen.get("site"):
        found = found.filter(Q(site=chosen["site"]) | Q(asset__site=chosen["site"]))
    if chosen.get("profile"):
        found = found.filter(profile=chosen["profile"])
    return compliance.with_newest_audit(found)


@login_required
def fleet_compliance(request):
    """Per profile and site: how many of the current revisions' readings comply; below, the
    assignments there, with their status and why, and their newest and next audit."""
    filterset = ComplianceFilter(request.GET, queryset=ConfigurationObservation.objects.none(), request=request)
    assignments = AssignmentTable(_assignments(request, filterset), prefix="assignments-")
    lists.paginate(request, assignments)
    context = {"nav": "compliance", "assignments": assignments, "below_table": "profiles/assignments.html"}
    return lists.list_page(request, ComplianceTable, filterset, "profiles/compliance.html", context)


@login_required
@require_POST
def audit_assignment(request, assignment_id):
    """Audit an assignment now, through the service ``POST /api/v1/profile-assignments/{id}/audit/``
    calls: its refusals (role, authority, kill switch, a stopped assignment) are told as a message
    on the page it came from; another site's assignment is not found (404), as through the API."""
    try:  # from an asset's panel, back to it; else to the fleet's page
        back = redirect("console:asset", asset_id=uuid.UUID(request.POST.get("asset", "")))
    except ValueError:
        back = redirect("profiles:compliance")
    try:
        jobs = audits.request_audit(request.user, assignment_id)
    except NotFound as exc:
        raise Http404 from exc
    except ServiceError as exc:
        messages.error(request, f"Not audited: {exc.detail}")
        return back
    messages.success(request, f"Audit requested: {len(jobs)} job(s), {status_word(jobs[0].status)}.")
    return back


class AuditFilter(django_filters.FilterSet):
    site = django_filters.ModelChoiceFilter(label="Site", queryset=_sites, empty_label="any")
    status = django_filters.ChoiceFilter(
        label="Status", choices=[(s.value, s.label) for s in JobStatus if s in ACTIVE], empty_label="any"
    )
    q = django_filters.CharFilter(label="Asset or profile", method="search")

    class Meta:
        model = ConfigurationAuditJob
        fields = ["site", "status"]

    def search(self, queryset, name, value):
        return queryset.filter(Q(asset__hostname__icontains=value) | Q(assignment__profile__name__icontains=value))


class AuditTable(ListTable):
    asset = tables.Column(
        verbose_name="Asset",
        accessor="asset__hostname",
        linkify=lambda record: f"/console/jobs/profile_audit/{record.pk}/",
        order_by=("asset__hostname", "-created_at"),
    )
    profile = tables.Column(verbose_name="Profile", accessor="assignment__profile__name")
    revision = tables.Column(verbose_name="Revision", accessor="profile_revision__revision", orderable=False)
    site = tables.Column(verbose_name="Site", accessor="site__name")
    status = tables.Column(verbose_name="Status")
    requested_by = tables.Column(verbose_name="Requested by", accessor="requested_by__username")
    created_at = tables.DateTimeColumn(format="Y-m-d H:i:s", verbose_name="Requested")
    started_at = tables.DateTimeColumn(format="Y-m-d H:i:s", verbose_name="Started")

    class Meta(ListTable.Meta):
        attrs = {"class": "list", "id": "running-audits"}
        order_by = ("-created_at",)
        empty_text = "No audit is waiting or running on your sites."
        row_attrs = {"data-job-id": lambda record: record.pk}

    def render_status(self, record):
        return status_word(record.status)  # the one word every page shows


@login_required
def running_audits(request):
    """Audits awaiting approval, queued or running, on the caller's sites."""
    jobs = ConfigurationAuditJob.objects.filter(
        status__in=ACTIVE, site__in=access.visible_sites(request.user)
    ).select_related("asset", "site", "assignment__profile", "profile_revision", "requested_by")
    filterset = AuditFilter(request.GET, queryset=jobs, request=request)
    return lists.list_page(request, AuditTable, filterset, "profiles/audits.html", {"nav": "compliance"}, lazy=True)
