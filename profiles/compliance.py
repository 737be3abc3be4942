"""Compliance read from observations (actual state) against each profile's current revision: the
fleet summary per profile and site, and an asset's items with desired and actual side by side and
each item's drift timeline. Reading only; the caller's sites bound every answer (Law 7)."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import Count, F, FloatField, Q, QuerySet
from django.db.models.functions import Cast

from profiles import audits
from profiles.models import ConfigurationDriftEvent, ConfigurationItem, ConfigurationObservation, ObservationState

TIMELINE = 10  # drift events shown per item on an asset's page


def summary(sites, *, site=None, profile=None) -> QuerySet:
    """One row per (profile, site) of ``sites``: readings of the profile's current revision there,
    how many comply, do not, or could not be read, and the percentage compliant (of the readings).
    Items not read yet on an asset are not counted. One query, grouped in the database."""
    state = ObservationState
    readings = ConfigurationObservation.objects.filter(
        asset__site__in=sites, profile_revision_id=F("profile_revision__profile__current_revision_id")
    )
    if site is not None:
        readings = readings.filter(asset__site=site)
    if profile is not None:
        readings = readings.filter(profile_revision__profile=profile)
    return (
        readings.values(
            profile_id=F("profile_revision__profile_id"),
            profile_name=F("profile_revision__profile__name"),
            site_id=F("asset__site_id"),
            site_name=F("asset__site__name"),
        )
        .annotate(
            observed=Count("id"),
            compliant_count=Count("id", filter=Q(state=state.COMPLIANT)),
            non_compliant_count=Count("id", filter=Q(state=state.NON_COMPLIANT)),
            error_count=Count("id", filter=Q(state=state.ERROR)),
        )
        .annotate(percent=Cast(F("compliant_count"), FloatField()) * 100.0 / Cast(F("observed"), FloatField()))
        .order_by("profile_name", "site_name")
    )


@dataclass
class ItemRow:
    """One assigned item on one asset: desired (the item) beside actual (its observation)."""

    item: ConfigurationItem
    observation: ConfigurationObservation | None
    timeline: list[ConfigurationDriftEvent] = field(default_factory=list)


def asset_items(asset, user=None) -> list[ItemRow]:
    """The items of every live profile assigned to the asset (directly or through its site) at the
    profile's current revision, each with its newest reading and its last drift events, newest
    first (the asset page's panel: four queries whatever the number of items)."""
    assigned = audits.assigned_to(asset).filter(status__in=audits.AUDITABLE)
    items = list(
        ConfigurationItem.objects.filter(revision_id__in=assigned.values("profile__current_revision"))
        .select_related("revision__profile", "config_key")
        .order_by("revision__profile__name", "position")
    )
    ids = [item.pk for item in items]
    observed = {row.item_id: row for row in ConfigurationObservation.objects.filter(asset=asset, item__in=ids)}
    rows = {item.pk: ItemRow(item, observed.get(item.pk)) for item in items}
    for event in ConfigurationDriftEvent.objects.filter(asset=asset, item__in=ids).order_by("-detected_at")[
        : TIMELINE * max(len(ids), 1)
    ]:
        timeline = rows[event.item_id].timeline
        if len(timeline) < TIMELINE:
            timeline.append(event)
    return list(rows.values())
