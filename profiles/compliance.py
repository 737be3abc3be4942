"""Compliance read from observations (actual state) against each profile's current revision: the
fleet summary per profile and site, and an asset's items with desired and actual side by side and
each item's drift timeline. Reading only; the caller's sites bound every answer (Law 7)."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import connection

from profiles import audits
from profiles.models import (
    AssetConfigurationProfile,
    ComplianceCount,
    ConfigurationDriftEvent,
    ConfigurationItem,
    ConfigurationObservation,
    ConfigurationProfile,
)
from rmm.inventory.models import Asset, Site

TIMELINE = 10  # drift events shown per item on an asset's page


def summary(sites, *, site=None, profile=None) -> list[dict]:
    """One row per (profile, site) of ``sites``: readings of the profile's current revision there
    on assets a live assignment of the profile still covers (its own or its site's: a withdrawn or
    stopped one's old readings are not compliance), how many comply, do not, or could not be read,
    and the percentage compliant (of the readings). Items not read yet on an asset are not counted.

    One query over the count rows (one per asset and revision, kept by every intake of readings:
    :mod:`profiles.counts`), summed per profile and site: for 10,000 assets × 50 items it reads
    10,000 rows, not 500,000 readings (docs/performance.md). Each row's live assignment is two
    probes of the assignments' asset and site indexes, not a scan of the assignments."""
    where, params = [], []
    sql, site_params = sites.values("pk").query.sql_with_params()
    where.append(f"a.site_id IN ({sql})")
    params.extend(site_params)
    for column, value, model in (("a.site_id", site, Site), ("p.id", profile, ConfigurationProfile)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(model._meta.pk.get_db_prep_value(getattr(value, "pk", value), connection))
    live = ", ".join(["%s"] * len(audits.AUDITABLE))
    params.extend([*audits.AUDITABLE, *audits.AUDITABLE])
    assignments = AssetConfigurationProfile._meta.db_table
    # only table names are interpolated; every value is a parameter. A live assignment of the
    # profile covers the asset (its own, or its site's): two probes of the assignments' indexes.
    query = f"""
        SELECT p.id, p.name, a.site_id, s.name, SUM(cc.observed), SUM(cc.compliant), SUM(cc.non_compliant),
            SUM(cc.errors)
        FROM {ComplianceCount._meta.db_table} cc
        JOIN {ConfigurationProfile._meta.db_table} p ON p.current_revision_id = cc.profile_revision_id
        JOIN {Asset._meta.db_table} a ON a.id = cc.asset_id
        JOIN {Site._meta.db_table} s ON s.id = a.site_id
        WHERE {" AND ".join(where)}
            AND (EXISTS (SELECT 1 FROM {assignments} l
                    WHERE l.asset_id = a.id AND l.profile_id = p.id AND l.status IN ({live}))
                OR EXISTS (SELECT 1 FROM {assignments} l
                    WHERE l.site_id = a.site_id AND l.profile_id = p.id AND l.status IN ({live})))
        GROUP BY p.id, p.name, a.site_id, s.name
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
