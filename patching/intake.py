"""A scan's report into the catalog and the asset's patch state (actual state: only agent reports
write it, Law 2). The server writes only what changed since the asset's last scan, in a constant
number of queries whatever the number of packages:

- the asset's last digest (1 query): the same report as last time writes nothing more;
- its patch rows and the catalog's entries of the reported packages (2);
- new catalog entries (vendor = the distribution, product = the package, patch_id = the
  version) inserted and read back (2, only when there are new ones);
- new rows (1), changed rows by their new status (at most 4 updates), the digest (1 or 2);
- an active patch job on the asset, only while a row is ``installing`` (1).

How a row moves (docs/patching.md): reported installed → ``installed`` (from any status); reported
available → ``missing`` (a ``failed`` row stays failed, an ``installing`` one stays while its
patch job runs); not reported while the package is reported at another version → ``superseded``;
an ``installing`` row after its patch job's re-scan: ``installed`` if reported installed, else
``failed``. ``installed`` is never written because an install exited 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from patching import worst
from patching.models import (
    AssetPatch,
    AssetPatchScan,
    AssetPatchStatus,
    CatalogSource,
    PatchCatalog,
    PatchInstallJob,
)
from patching.scans import Scan
from rmm.core import bulk
from rmm.engine.states import ACTIVE

P = AssetPatchStatus


@dataclass
class Ingested:
    unchanged: bool  # the same report as the asset's last scan: nothing written
    created: int = 0  # new asset_patches rows
    changed: int = 0  # rows whose status changed
    catalog_created: int = 0


def ingest(asset_id, scan: Scan, now: datetime, *, job_wanted: set[tuple[str, str]] | None = None) -> Ingested:
    """Write what ``scan`` changes on the asset. ``job_wanted``: the (package, version) pairs of the
    patch job this scan follows: its ``installing`` rows are decided now (installed or failed)."""
    digest = scan.digest()
    last = AssetPatchScan.objects.filter(asset_id=asset_id).values_list("digest", flat=True).first()
    if last == digest and job_wanted is None:
        AssetPatchScan.objects.filter(asset_id=asset_id).update(scanned_at=now)
        return Ingested(unchanged=True)
    reported: dict[tuple[str, str], str] = {(name, version): P.INSTALLED for name, version in scan.installed.items()}
    for name, update in scan.available.items():
        reported.setdefault((name, update.version), P.MISSING)
    entries = _entries(scan, reported, now)
    rows = list(
        AssetPatch.objects.filter(asset_id=asset_id).values_list(
            "pk", "patch_id", "status", "patch__vendor", "patch__product", "patch__patch_id"
        )
    )
    running = None
    if job_wanted is None and any(status == P.INSTALLING for _, _, status, *_ in rows):
        running = PatchInstallJob.objects.filter(asset_id=asset_id, status__in=ACTIVE).exists()
    products = set(scan.installed) | set(scan.available)
    moves: dict[str, list] = {status: [] for status in P.values}
    seen = set()
    for pk, patch_pk, status, vendor, product, patch_id in rows:
        key = (product, patch_id)
        if vendor != scan.vendor:  # an imported advisory's entry of another vendor name: not the scan's
            continue
        seen.add(patch_pk)
        new = _next(status, reported.get(key), product in products, key, job_wanted, running)
        if new != status:
            moves[new].append(pk)
    created = [
        AssetPatch(
            asset_id=asset_id,
            patch_id=entries[key],
            status=status,
            detected_at=now,
            installed_at=now if status == P.INSTALLED else None,
        )
        for key, status in reported.items()
        if entries[key] not in seen
    ]
    bulk.insert_many(created)
    changed = 0
    for status, pks in moves.items():
        if pks:
            extra = {"installed_at": now} if status == P.INSTALLED else {}
            changed += AssetPatch.objects.filter(pk__in=pks).update(status=status, **extra)
    stamp = {"digest": digest, "family": scan.family, "vendor": scan.vendor, "scanned_at": now}
    if not AssetPatchScan.objects.filter(asset_id=asset_id).update(**stamp):
        AssetPatchScan.objects.create(asset_id=asset_id, **stamp)
    if created or changed:
        worst.refresh(asset_id=asset_id)
    return Ingested(unchanged=False, created=len(created), changed=changed, catalog_created=entries.created)


class _Entries(dict):
    created = 0


def _entries(scan: Scan, reported: dict, now: datetime) -> _Entries:
    """(package, version) -> its catalog entry's id, made for those the catalog lacks."""
    entries = _Entries()
    if not reported:
        return entries
    products = {name for name, _ in reported}
    for pk, product, patch_id in PatchCatalog.objects.filter(vendor=scan.vendor, product__in=products).values_list(
        "pk", "product", "patch_id"
    ):
        if (product, patch_id) in reported:
            entries[(product, patch_id)] = pk
    lacking = [key for key in reported if key not in entries]
    if lacking:
        new = []
        for product, version in lacking:
            update = scan.available.get(product)
            ours = update is not None and update.version == version
            new.append(
                PatchCatalog(
                    vendor=scan.vendor,
                    product=product,
                    patch_id=version,
                    fixed_version=version,
                    severity=update.severity if ours else 0,
                    title=update.advisory if ours and update.advisory != "security" else "",
                    source=CatalogSource.SCAN,
                    imported_at=now,
                )
            )
        # Another asset's scan may insert the same entry meanwhile: ignored here, read back below.
        PatchCatalog.objects.bulk_create(new, ignore_conflicts=True)
        entries.created = len(new)
        for pk, product, patch_id in PatchCatalog.objects.filter(
            vendor=scan.vendor, product__in={product for product, _ in lacking}
        ).values_list("pk", "product", "patch_id"):
            if (product, patch_id) in reported:
                entries[(product, patch_id)] = pk
    return entries


def _next(status: str, reported: str | None, product_reported: bool, key, job_wanted, running) -> str:
    """A row's status after a scan (see the module's docstring)."""
    if reported == P.INSTALLED:
        return P.INSTALLED
    if status == P.INSTALLING:
        if job_wanted is not None:
            return P.FAILED if key in job_wanted else status
        if running:
            return status
        # its patch job ended without a re-scan (aborted, killed): what the scan says
        if reported == P.MISSING:
            return P.MISSING
        return P.SUPERSEDED if product_reported else P.MISSING
    if reported == P.MISSING:
        return P.FAILED if status == P.FAILED else P.MISSING
    if product_reported:
        return P.SUPERSEDED
    # the package is reported at no version (removed, or left unconfigured by a failed install)
    return P.FAILED if status == P.FAILED else P.SUPERSEDED
