"""Compliance read from observations (actual state) against each profile's current revision: the
fleet summary per profile and site, and an asset's items with desired and actual side by side and
each item's drift timeline. Reading only; the caller's sites bound every answer (Law 7)."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import connection

from profiles import audits
from profiles.models import (
    ConfigurationDriftEvent,
    ConfigurationItem,
    ConfigurationObservation,
    ConfigurationProfile,
    ConfigurationProfileRevision,
    ObservationState,
)
from rmm.inventory.models import Asset, Site

TIMELINE = 10  # drift events shown per item on an asset's page


def summary(sites, *, site=None, profile=None) -> list[dict]:
    """One row per (profile, site) of ``sites``: readings of the profile's current revision there,
    how many comply, do not, or could not be read, and the percentage compliant (of the readings).
    Items not read yet on an asset are not counted.

    One query in two steps, for 10,000 assets × 50 items: the readings are counted per (revision,
    asset) first, from the index on (profile_revision, asset, state) alone (no row read, no join
    per reading), then those 10,000 counts are summed per profile and site. Joining every
    reading to its asset and grouping by names took ten times as long (docs/performance.md)."""
    state = ObservationState
    where, params = [], []
    sql, site_params = sites.values("pk").query.sql_with_params()
    where.append(f"a.site_id IN ({sql})")
    params.extend(site_params)
    for column, value, model in (("a.site_id", site, Site), ("r.profile_id", profile, ConfigurationProfile)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(model._meta.pk.get_db_prep_value(getattr(value, "pk", value), connection))
    counts = ", ".join(
        f"SUM(CASE WHEN o.state = '{value}' THEN 1 ELSE 0 END) AS {name}"
        for name, value in (("c", state.COMPLIANT), ("nc", state.NON_COMPLIANT), ("e", state.ERROR))
    )
    # only table names and constants are interpolated; every value is a parameter
    query = f"""
        SELECT r.profile_id, p.name, a.site_id, s.name, SUM(pa.n), SUM(pa.c), SUM(pa.nc), SUM(pa.e)
        FROM (
            SELECT o.profile_revision_id, o.asset_id, COUNT(*) AS n, {counts}
            FROM {ConfigurationObservation._meta.db_table} o
            JOIN {ConfigurationProfile._meta.db_table} cp ON cp.current_revision_id = o.profile_revision_id
            GROUP BY o.profile_revision_id, o.asset_id
        ) pa
        JOIN {Asset._meta.db_table} a ON a.id = pa.asset_id
        JOIN {Site._meta.db_table} s ON s.id = a.site_id
        JOIN {ConfigurationProfileRevision._meta.db_table} r ON r.id = pa.profile_revision_id
        JOIN {ConfigurationProfile._meta.db_table} p ON p.id = r.profile_id
        WHERE {" AND ".join(where)}
        GROUP BY r.profile_id, p.name, a.site_id, s.name
        ORDER BY p.name, s.name
    """  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        found = cursor.fetchall()
    uuid_of = ConfigurationProfile._meta.pk.to_python
    return [
        {
            "profile_id": uuid_of(profile_id),
            "profile_name": profile_name,
            "site_id": uuid_of(site_id),
            "site_name": site_name,
            "observed": int(observed),
            "compliant_count": int(compliant),
            "non_compliant_count": int(non_compliant),
            "error_count": int(errors),
            "percent": 100.0 * int(compliant) / int(observed),
        }
        for profile_id, profile_name, site_id, site_name, observed, compliant, non_compliant, errors in found
    ]


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
