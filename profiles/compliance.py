"""Compliance read from observations (actual state) against each profile's current revision: the
fleet summary per profile and site, an asset's items with desired and actual side by side and each
item's drift timeline, and assignments with their status, why, their newest and next audit.
Reading only; the caller's sites bound every answer (Law 7)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.db import connection
from django.db.models import OuterRef, QuerySet, Subquery

from profiles import audits, scheduling
from profiles.models import (
    AssetConfigurationProfile,
    ComplianceCount,
    ConfigurationAuditJob,
    ConfigurationDriftEvent,
    ConfigurationItem,
    ConfigurationObservation,
    ConfigurationProfile,
)
from rmm.inventory.models import Asset, Site

TIMELINE = 10  # drift events shown per item on an asset's page


SUMMARY_BY = ("site", "asset")  # what the fleet summary's rows are per, beside the profile


def summary(sites, *, site=None, profile=None, by: str = "site") -> list[dict]:
    """One row per (profile, site) of ``sites``, or per (profile, asset) with ``by="asset"``:
    readings of the profile's current revision there on assets a live assignment of the profile
    still covers (its own or its site's: a withdrawn or stopped one's old readings are not
    compliance), how many comply, do not, or could not be read, and the percentage compliant (of
    the readings). Items not read yet on an asset are not counted.

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
    per_asset = ", a.hostname, a.id" if by == "asset" else ""
    # only table names are interpolated; every value is a parameter. A live assignment of the
    # profile covers the asset (its own, or its site's): two probes of the assignments' indexes.
    query = f"""
        SELECT p.id, p.name, a.site_id, s.name{per_asset}, SUM(cc.observed), SUM(cc.compliant),
            SUM(cc.non_compliant), SUM(cc.errors)
        FROM {ComplianceCount._meta.db_table} cc
        JOIN {ConfigurationProfile._meta.db_table} p ON p.current_revision_id = cc.profile_revision_id
        JOIN {Asset._meta.db_table} a ON a.id = cc.asset_id
        JOIN {Site._meta.db_table} s ON s.id = a.site_id
        WHERE {" AND ".join(where)}
            AND (EXISTS (SELECT 1 FROM {assignments} l
                    WHERE l.asset_id = a.id AND l.profile_id = p.id AND l.status IN ({live}))
                OR EXISTS (SELECT 1 FROM {assignments} l
                    WHERE l.site_id = a.site_id AND l.profile_id = p.id AND l.status IN ({live})))
        GROUP BY p.id, p.name, a.site_id, s.name{per_asset}
        ORDER BY p.name, s.name{per_asset}
    """  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        found = cursor.fetchall()
    uuid_of = ConfigurationProfile._meta.pk.to_python
    rows = []
    for profile_id, profile_name, site_id, site_name, *asset, observed, compliant, non_compliant, errors in found:
        row = {
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
        if asset:
            row["hostname"], row["asset_id"] = asset[0], uuid_of(asset[1])
        rows.append(row)
    return rows


@dataclass
class ItemRow:
    """One assigned item on one asset: desired (the item) beside actual (its observation)."""

    item: ConfigurationItem
    observation: ConfigurationObservation | None
    timeline: list[ConfigurationDriftEvent] = field(default_factory=list)


def asset_items(asset) -> list[ItemRow]:
    """The items of every live profile assigned to the asset (directly or through its site) at the
    profile's current revision, each with its newest reading and its last drift events, newest
    first (four queries whatever the number of items)."""
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


def with_newest_audit(assignments: QuerySet, asset=None) -> QuerySet:
    """The assignments, each with the id of its newest audit (on ``asset`` when given) as
    ``newest_audit_id``: read through the audit jobs' (assignment, created_at) index."""
    newest = ConfigurationAuditJob.objects.filter(assignment=OuterRef("pk"))
    if asset is not None:
        newest = newest.filter(asset=asset)
    return assignments.annotate(newest_audit_id=Subquery(newest.order_by("-created_at").values("pk")[:1]))


@dataclass
class AssignmentRow:
    """An assignment as the console shows it: its status and why (``status_reason``: a stopped
    one's schedule says why it stopped), its newest audit, and when the schedule audits next (None
    once it is not live, or for a site's assignment listed for the whole site, whose assets each
    have their own slot)."""

    assignment: AssetConfigurationProfile
    newest_audit: ConfigurationAuditJob | None
    next_audit_at: datetime | None

    @property
    def live(self) -> bool:
        return self.assignment.status in audits.AUDITABLE


def assignment_rows(assignments: list[AssetConfigurationProfile], asset=None) -> list[AssignmentRow]:
    """Rows of assignments read :func:`with_newest_audit`: their newest audits in one query, and
    each one's next audit of ``asset`` (or of its own asset)."""
    audit_ids = [assignment.newest_audit_id for assignment in assignments if assignment.newest_audit_id]
    newest = ConfigurationAuditJob.objects.in_bulk(audit_ids)
    rows = []
    for assignment in assignments:
        target = asset.pk if asset is not None else assignment.asset_id
        upcoming = scheduling.next_audit_at(assignment, target) if target else None
        rows.append(AssignmentRow(assignment, newest.get(assignment.newest_audit_id), upcoming))
    return rows


@dataclass
class AssetPanel:
    """The asset page's compliance panel: every assignment that covers the asset, whatever its
    status, and the items of the live ones."""

    assignments: list[AssignmentRow]
    items: list[ItemRow]


def asset_panel(asset, user=None) -> AssetPanel:
    """What the asset page's panel shows (a constant number of queries): the assignments of the
    asset and of its site, live ones first, each with its status, why, its newest audit of this
    asset and the next; and the live ones' items, desired beside actual."""
    covering = with_newest_audit(audits.assigned_to(asset), asset).select_related("profile", "site")
    ordered = sorted(
        covering, key=lambda assignment: (assignment.status not in audits.AUDITABLE, assignment.profile.name)
    )
    return AssetPanel(assignment_rows(ordered, asset), asset_items(asset))
