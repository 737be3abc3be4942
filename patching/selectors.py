"""Reads that the API and the console share: fleet patch compliance and an asset's patch panel."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, Q

from patching.models import AssetPatch, AssetPatchScan, Severity
from patching.worst import OUTSTANDING
from rmm.access import roles as access
from rmm.inventory.models import Asset

PANEL_ROWS = 50


@dataclass
class ComplianceRow:
    site: str
    severity: str  # patches of this severity or higher
    assets: int  # the site's active assets
    scanned: int  # of them, those a scan has reported
    fully_patched: int  # scanned, and missing no patch of this severity or higher
    missing: int  # scanned, and missing at least one

    @property
    def percent(self) -> int:
        return round(100 * self.fully_patched / self.scanned) if self.scanned else 0


def compliance(user, *, site_name: str | None = None, severity: Severity | None = None) -> list[ComplianceRow]:
    """Per site the caller may see and per severity (that severity or higher), how many scanned
    assets are fully patched and how many miss a patch. Two queries whatever the fleet: the
    assets per site, and the scanned assets per site and worst outstanding severity (kept on
    each asset's scan row: :mod:`patching.worst`)."""
    sites = access.visible_sites(user)
    if site_name:
        sites = sites.filter(name=site_name)
    scanned = AssetPatchScan.objects.values("asset_id")
    totals = {
        row["site__name"]: row
        for row in Asset.objects.filter(site__in=sites, retired_at__isnull=True)
        .values("site__name")
        .annotate(assets=Count("pk"), scanned=Count("pk", filter=Q(pk__in=scanned)))
        .order_by()
    }
    worst_of: dict[str, list[tuple[int, int]]] = {}
    for site, level, count in (
        AssetPatchScan.objects.filter(
            asset__site__in=sites, asset__retired_at__isnull=True, worst_outstanding__isnull=False
        )
        .values("asset__site__name", "worst_outstanding")
        .annotate(n=Count("pk"))
        .values_list("asset__site__name", "worst_outstanding", "n")
        .order_by()
    ):
        worst_of.setdefault(site, []).append((level, count))
    levels = [severity] if severity is not None else sorted(Severity, reverse=True)
    rows = []
    for site in sorted(totals):
        total = totals[site]
        for level in levels:
            missing = sum(count for found, count in worst_of.get(site, ()) if found >= level)
            rows.append(
                ComplianceRow(
                    site=site,
                    severity=Severity(level).label,
                    assets=total["assets"],
                    scanned=total["scanned"],
                    fully_patched=total["scanned"] - missing,
                    missing=missing,
                )
            )
    return rows


def asset_panel(asset, user) -> dict:
    """The console's patches panel on an asset's page (the page has checked the user may see the
    asset): its rows per status and its outstanding patches, highest severity first (two queries)."""
    counts = dict(AssetPatch.objects.filter(asset=asset).values_list("status").annotate(n=Count("pk")).order_by())
    outstanding = list(
        AssetPatch.objects.filter(asset=asset, status__in=OUTSTANDING)
        .select_related("patch")
        .order_by("-patch__severity", "patch__product")[:PANEL_ROWS]
    )
    return {"counts": counts, "outstanding": outstanding, "scanned": bool(counts)}
