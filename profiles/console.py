"""The console's compliance pages: the fleet's compliance per profile and site, and the audits
running now (each of the caller's sites only); an asset's items are a panel on its page
(:func:`profiles.compliance.asset_items`, registered in ``apps.py``)."""

from __future__ import annotations

import django_filters
import django_tables2 as tables
from django.contrib.auth.decorators import login_required
from django.db.models import Q

from profiles import compliance
from profiles.models import ConfigurationAuditJob, ConfigurationObservation, ConfigurationProfile
from rmm.access import roles as access
from rmm.console import lists
from rmm.console.lists import ListTable
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


@login_required
def fleet_compliance(request):
    """Per profile and site: how many of the current revisions' readings comply."""
    filterset = ComplianceFilter(request.GET, queryset=ConfigurationObservation.objects.none(), request=request)
    return lists.list_page(request, ComplianceTable, filterset, "profiles/compliance.html", {"nav": "compliance"})


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
