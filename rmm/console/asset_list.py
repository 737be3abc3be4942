"""The console's assets: the list (search, filters, sort, pages in a constant number of queries)
and what an asset's page shows. An asset is online while its agent, not revoked, was seen within
``RMM_AGENT_OFFLINE_SECONDS`` (by default five heartbeat intervals), and rebooting (not offline)
while a step's reboot's ``RMM_REBOOT_GRACE_SECONDS`` lasts, as the engine's sweep counts it."""

from __future__ import annotations

import contextlib
import uuid
from datetime import datetime, timedelta

import django_filters
import django_tables2 as tables
from django import forms
from django.conf import settings
from django.db.models import BooleanField, Case, F, Q, QuerySet, Value, When
from django.utils import timezone

from rmm.access import roles as access
from rmm.console.lists import CellColumn, ListTable
from rmm.inventory.models import Asset, Site


def online_since() -> datetime:
    """An agent seen at or after this moment is online."""
    return timezone.now() - timedelta(seconds=settings.RMM_AGENT_OFFLINE_SECONDS)


def visible_assets(user) -> QuerySet[Asset]:
    """The assets of the user's sites, each with its site, agent version, last seen, online and
    rebooting."""
    live = Q(agent__revoked_at__isnull=True)
    online = live & Q(agent__last_seen_at__gte=online_since())
    rebooting = live & Q(agent__rebooting_until__gte=timezone.now())
    return (
        Asset.objects.filter(site__in=access.visible_sites(user))
        .select_related("site")
        .annotate(
            agent_version=F("agent__version"),
            last_seen=F("agent__last_seen_at"),
            revoked_at=F("agent__revoked_at"),
            online=Case(When(online, then=Value(True)), default=Value(False), output_field=BooleanField()),
            rebooting=Case(When(rebooting, then=Value(True)), default=Value(False), output_field=BooleanField()),
        )
    )


class AssetFilter(django_filters.FilterSet):
    q = django_filters.CharFilter(
        label="Search",
        method="search",
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "hostname or asset id"}),
    )
    site = django_filters.ModelChoiceFilter(
        label="Site", queryset=Site.objects.none(), to_field_name="name", empty_label="any"
    )
    online = django_filters.ChoiceFilter(
        label="Online",
        choices=[("yes", "online"), ("rebooting", "rebooting"), ("no", "offline")],
        method="filter_online",
        empty_label="any",
    )
    os = django_filters.ChoiceFilter(label="OS", choices=[], empty_label="any")
    agent_version = django_filters.ChoiceFilter(
        label="Agent version", field_name="agent__version", choices=[], empty_label="any"
    )
    # Retired assets are gone from the list unless asked for (their pages stay).
    retired = django_filters.ChoiceFilter(
        label="Retired", choices=[("yes", "retired")], method="filter_retired", empty_label="no (active)"
    )

    def __init__(self, data, *, user):
        assets = visible_assets(user)
        super().__init__(data, queryset=assets)
        self.filters["site"].queryset = access.visible_sites(user)
        distinct = assets.order_by()
        self.filters["os"].extra["choices"] = [
            (os, os) for os in distinct.exclude(os="").values_list("os", flat=True).distinct().order_by("os")
        ]
        versions = distinct.filter(agent__isnull=False).exclude(agent__version="")
        self.filters["agent_version"].extra["choices"] = [
            (v, v) for v in versions.values_list("agent__version", flat=True).distinct().order_by("agent__version")
        ]

    def search(self, queryset, name, value):
        found = Q(hostname__icontains=value.strip())
        with contextlib.suppress(ValueError):
            found |= Q(pk=uuid.UUID(value.strip()))
        return queryset.filter(found)

    def filter_queryset(self, queryset):
        if self.form.cleaned_data.get("retired") != "yes":
            queryset = queryset.filter(retired_at__isnull=True)
        return super().filter_queryset(queryset)

    def filter_retired(self, queryset, name, value):
        return queryset.filter(retired_at__isnull=False)

    def filter_online(self, queryset, name, value):
        if value == "rebooting":
            return queryset.filter(rebooting=True)
        return queryset.filter(online=value == "yes", rebooting=False)


class AssetTable(ListTable):
    hostname = tables.Column(
        verbose_name="Hostname", linkify=("console:asset", {"asset_id": tables.A("pk")}), order_by=("hostname", "id")
    )
    site = tables.Column(verbose_name="Site", accessor="site__name", order_by=("site__name", "hostname", "id"))
    os = tables.Column(verbose_name="OS", order_by=("os", "hostname", "id"))
    agent_version = tables.Column(verbose_name="Agent version", order_by=("agent_version", "hostname", "id"))
    online = CellColumn(
        template_name="console/online_cell.html",
        verbose_name="Online",
        order_by=("online", "rebooting", "hostname", "id"),
    )
    last_seen = tables.DateTimeColumn(format="Y-m-d H:i:s", verbose_name="Last seen", order_by=("last_seen", "id"))

    class Meta(ListTable.Meta):
        attrs = {"class": "list", "id": "assets"}
        order_by = ("hostname",)
        empty_text = "No assets match."
        row_attrs = {"data-asset-id": lambda record: record.pk}
