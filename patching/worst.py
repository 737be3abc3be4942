"""Each scanned asset's worst outstanding severity (``asset_patch_scans.worst_outstanding``), derived
from its ``asset_patches`` and the catalog's severities: refreshed in the transaction of every
write that can change it (a scan's intake, a catalog import that changes entries), in one
statement, so fleet compliance (:func:`patching.selectors.compliance`) reads one row per asset."""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Max, OuterRef, Subquery

from patching.models import AssetPatch, AssetPatchScan, AssetPatchStatus

# Not yet patched: what a scan found missing, an install that failed, one under way.
OUTSTANDING = (AssetPatchStatus.MISSING, AssetPatchStatus.FAILED, AssetPatchStatus.INSTALLING)


def refresh(*, asset_id=None, patch_ids: Iterable | None = None) -> int:
    """Recompute the worst outstanding severity of one asset (a scan's intake), of the assets with
    any of ``patch_ids`` outstanding (a catalog import changed those entries), or of every asset
    (neither: an upgrade, a bulk load). How many assets' rows were written."""
    worst = (
        AssetPatch.objects.filter(asset_id=OuterRef("asset_id"), status__in=OUTSTANDING)
        .values("asset_id")
        .annotate(worst=Max("patch__severity"))
        .values("worst")
    )
    scans = AssetPatchScan.objects.all()
    if asset_id is not None:
        scans = scans.filter(asset_id=asset_id)
    if patch_ids is not None:
        scans = scans.filter(
            asset_id__in=AssetPatch.objects.filter(patch_id__in=list(patch_ids), status__in=OUTSTANDING).values(
                "asset_id"
            )
        )
    return scans.update(worst_outstanding=Subquery(worst))
