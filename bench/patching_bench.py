#!/usr/bin/env python3
"""Scan intake and fleet compliance at scale: N assets × P packages, a first report, then a day.

    .venv/bin/python -m bench.patching_bench [--assets 10000] [--packages 2000] [--sample 200]
    make bench-patching BENCH_ARGS="--assets 2000"

It makes a new PostgreSQL database on 127.0.0.1 (dropped afterwards) and one site of N assets.
``--sample`` assets send their first report through the intake the server runs for a finished scan
(``patching.scans.parse`` then ``patching.intake.ingest``: every query, timed); the other assets'
P rows each (and their last scan's digest) are copied from the first sample asset's inside
PostgreSQL (INSERT … SELECT), as that same report would have written them, so the fleet holds
N × P rows without N reports' time. Then a day of deltas for the
sample: each asset's next report has a few packages upgraded and a new update available (what a
day changes), and the one after it is the same again (nothing changed: the digest alone). It prints
rows written, reports per second and queries per report for each, and the fleet compliance query
(``patching.selectors.compliance``, the API's) over the N × P rows: median of 5, warm.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from bench.scratch import scratch_database

UPDATES = 0.05  # of the packages, an update available in the first report
CHANGED = 5  # packages a day upgrades on an asset
SEVERITIES = (0, 1, 2, 3, 4)


def versions(packages: int, day: int) -> tuple[dict[str, str], dict[str, str]]:
    """(installed, available) {package: version} of one asset's report on ``day`` (0: the first):
    each day the first CHANGED packages with an update are upgraded and one more update appears."""
    installed = {f"zz-bench-{n:05d}": f"1.{n % 7}-1" for n in range(packages)}
    with_update = sorted(installed)[: max(1, int(packages * UPDATES)) + day]
    available = {name: installed[name].replace("-1", "-2") for name in with_update}
    for name in with_update[: CHANGED * day]:
        installed[name] = available.pop(name)
    return installed, available


def document(packages: int, day: int) -> dict:
    """A Debian scan's document (patching.scans.FORMAT), as the script writes it (the tests' maker)."""
    from tests.patching.scanning import dpkg_document

    installed, available = versions(packages, day)
    return dpkg_document(installed, available)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=int, default=10_000)
    parser.add_argument("--packages", type=int, default=2_000)
    parser.add_argument("--sample", type=int, default=200, help="assets whose reports go through the intake")
    args = parser.parse_args(argv)
    with scratch_database("rmm_patching"):
        print(json.dumps(_run(args)), flush=True)


def report_once(asset_id, body: dict) -> tuple[float, int, int]:
    """One report through the intake: (seconds, queries, rows written)."""
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from patching import intake, scans

    started = time.perf_counter()
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        done = intake.ingest(asset_id, scans.parse(body), timezone.now())
    return time.perf_counter() - started, len(queries), done.created + done.changed + done.catalog_created


def _phase(assets, body: dict) -> dict:
    timings, queries, rows = [], set(), []
    for asset_id in assets:
        seconds, count, written = report_once(asset_id, body)
        timings.append(seconds)
        queries.add(count)
        rows.append(written)
    return {
        "reports": len(assets),
        "reports_per_second": round(len(assets) / sum(timings), 1),
        "ms_per_report_median": round(1000 * statistics.median(timings), 1),
        "rows_written_per_report": round(statistics.mean(rows), 1),
        "queries_per_report": sorted(queries),
    }


def _seed(others: list, first_asset) -> float:
    """Copy the first sample asset's rows and digest to every other asset, inside PostgreSQL
    (one INSERT … SELECT per table: the rows never travel through Python)."""
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE bench_assets (id uuid PRIMARY KEY)")
        with cursor.connection.cursor().copy("COPY bench_assets (id) FROM STDIN") as copy:
            copy.write("".join(f"{asset_id}\n" for asset_id in others))
        cursor.execute(
            "INSERT INTO asset_patches (id, asset_id, patch_id, status, detected_at, installed_at) "
            "SELECT gen_random_uuid(), a.id, r.patch_id, r.status, r.detected_at, r.installed_at "
            "FROM bench_assets a CROSS JOIN asset_patches r WHERE r.asset_id = %s",
            [first_asset],
        )
        cursor.execute(
            "INSERT INTO asset_patch_scans (asset_id, family, vendor, digest, scanned_at, worst_outstanding) "
            "SELECT a.id, s.family, s.vendor, s.digest, s.scanned_at, s.worst_outstanding FROM bench_assets a "
            "CROSS JOIN asset_patch_scans s WHERE s.asset_id = %s",
            [first_asset],
        )
        for table in ("asset_patches", "asset_patch_scans", "patch_catalog", "inventory_asset", "inventory_site"):
            cursor.execute(f"ANALYZE {table}")
    return time.perf_counter() - started


def _run(args) -> dict:
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from patching import selectors, worst
    from patching.models import AssetPatch, PatchCatalog
    from rmm.inventory import services as inventory
    from rmm.inventory.models import Asset

    call_command("migrate", verbosity=0)
    site = inventory.get_or_create_site("bench", actor="cli:bench")
    assets = [Asset(site=site, hostname=f"asset-{n:05d}", os="Linux") for n in range(args.assets)]
    Asset.objects.bulk_create(assets, batch_size=5000)
    ids = [asset.pk for asset in assets]
    sample, others = ids[: args.sample], ids[args.sample :]
    out: dict = {"assets": args.assets, "packages": args.packages, "sample": args.sample}

    out["first_report"] = _phase(sample, document(args.packages, 0))
    # the updates' severities, as an advisory import would set them: by the package number's last
    # digit, 0 to 4 (5 to 9 stay none)
    for level in SEVERITIES:
        PatchCatalog.objects.filter(patch_id__endswith="-2", product__endswith=str(level)).update(severity=level)
    worst.refresh()  # what the import does for the assets where changed entries are outstanding
    out["seed_seconds"] = round(_seed(others, sample[0]), 1)
    out["rows"] = AssetPatch.objects.count()
    out["delta_report"] = _phase(sample, document(args.packages, 1))
    out["unchanged_report"] = _phase(sample, document(args.packages, 1))

    admin = get_user_model().objects.create_superuser("bench-admin", password=None)
    timings = []
    for _ in range(6):
        started = time.perf_counter()
        rows = selectors.compliance(admin)
        timings.append(time.perf_counter() - started)
    out["compliance_ms_median"] = round(1000 * statistics.median(timings[1:]), 1)
    out["compliance_high"] = next(
        {"fully_patched": row.fully_patched, "missing": row.missing} for row in rows if row.severity == "high"
    )
    out["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    return out


if __name__ == "__main__":
    main()
