#!/usr/bin/env python3
"""The console at fleet scale: the dashboard, the asset list and the job list over a seeded database.

    .venv/bin/python -m bench.console_bench [--assets 100000] [--jobs 1000000] [--sites 100] [--runs 5]
    make bench-console ASSETS=100000 JOBS=1000000
    make bench-console BENCH_ARGS=--measure-only   # the pages again, over the database already seeded

It (re)creates the PostgreSQL database ``rmm_console_bench`` on 127.0.0.1 (kept afterwards, so that
the pages can be measured again and looked at with EXPLAIN), migrates it and seeds it
(bench/console_seed.py: set-based SQL, minutes for a million jobs). Then it asks for each page
``--runs`` times through Django's test client (the whole request: session, middleware, view,
templates), signed in as a technician of every site, and prints per page the median and slowest
server time, the number of queries and their database time. docs/performance.md has the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import timedelta

from bench.scratch import PG, use_database

DATABASE = "rmm_console_bench"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=int, default=100_000)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5, help="requests per page (after one to warm up)")
    parser.add_argument("--measure-only", action="store_true", help="keep the seeded database, measure again")
    parser.add_argument("--database", default=DATABASE)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="rmm-console-bench-") as var:
        if not args.measure_only:
            _recreate(args.database)
        use_database(args.database, var)
        import django

        django.setup()
        if not args.measure_only:
            _seed(args)
        rows = measure(args.runs)
    print(table(rows))
    print(json.dumps(rows))


def _recreate(name: str) -> None:
    import psycopg

    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def _seed(args) -> None:
    from django.core.management import call_command
    from django.db import connection, transaction

    from bench import console_seed

    started = time.perf_counter()
    call_command("migrate", verbosity=0)
    console_seed.people_and_scripts(args.sites)
    with transaction.atomic(), connection.cursor() as cursor:
        seconds = console_seed.bulk(cursor, args.assets, args.jobs)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")  # as autovacuum would soon: index-only scans need the visibility map
    print(f"seeded {args.assets} assets, {args.jobs} jobs in {time.perf_counter() - started:.0f} s: {seconds}")


def pages() -> list[tuple[str, str]]:
    """(what, path) for every page measured, its values taken from the seeded data."""
    from django.utils import timezone

    from rmm.engine.models import Batch
    from rmm.inventory.models import Asset
    from scripting.models import ScriptJob

    asset = Asset.objects.filter(retired_at__isnull=True).order_by("hostname")[500]
    some_day = (timezone.now() - timedelta(days=30)).date()
    batch = Batch.objects.order_by("-created_at").first()
    task = ScriptJob.objects.filter(asset=asset).values_list("psa_task_id", flat=True).first()
    found = [
        ("dashboard", "/console/"),
        ("assets: first page", "/console/assets/"),
        ("assets: site and OS", "/console/assets/?site=site-007&os=Windows"),
        ("assets: offline", "/console/assets/?online=no"),
        ("assets: search", f"/console/assets/?q={asset.hostname[-5:]}"),
        ("assets: sorted by last seen", "/console/assets/?sort=-last_seen"),
        ("assets: page 1000", "/console/assets/?page=1000"),
        ("jobs: first page", "/console/jobs/"),
        ("jobs: failed", "/console/jobs/?status=failed"),
        ("jobs: lost", "/console/jobs/?status=lost"),
        ("jobs: kind", "/console/jobs/?kind=script"),
        ("jobs: asset", f"/console/jobs/?asset={asset.hostname}"),
        ("jobs: requester", "/console/jobs/?requester=tech-3"),
        ("jobs: PSA task", f"/console/jobs/?psa_task={task}"),
        ("jobs: one day", f"/console/jobs/?created_from={some_day}&created_to={some_day}"),
        ("jobs: search hostname", f"/console/jobs/?q={asset.hostname[-6:]}"),
        ("jobs: search requester", "/console/jobs/?q=tech-2"),
        ("jobs: sorted by status", "/console/jobs/?sort=status"),
        ("jobs: sorted by asset", "/console/jobs/?sort=hostname"),
        ("jobs: sorted by requester", "/console/jobs/?sort=-requester"),
        ("jobs: by requester, page 200", "/console/jobs/?sort=requester&page=200"),
        ("jobs: batch opened", f"/console/jobs/?batch={batch.pk}" if batch else "/console/jobs/?batch="),
        ("jobs: page 20", "/console/jobs/?page=20"),
        ("jobs: page 200", "/console/jobs/?page=200"),
        ("jobs: API first page", "/api/v1/jobs/"),
        ("jobs: API offset 100,000", "/api/v1/jobs/?offset=100000"),
    ]
    return found


def measure(runs: int) -> list[dict]:
    """Each page, once to warm up and then ``runs`` times: server time and queries."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()
    client.force_login(get_user_model().objects.get(username="bench-tech"))
    rows = []
    for what, path in pages():
        client.get(path)
        times, db = [], []
        for _ in range(runs):
            with CaptureQueriesContext(connection) as captured:
                started = time.perf_counter()
                response = client.get(path)
                times.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise SystemExit(f"{path}: {response.status_code} {response.content[:300]!r}")
            db.append(sum(float(q["time"]) for q in captured.captured_queries) * 1000)
        rows.append(
            {
                "page": what,
                "path": path,
                "median_ms": round(statistics.median(times)),
                "max_ms": round(max(times)),
                "queries": len(captured),
                "db_ms": round(statistics.median(db)),
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'page':32} {'median ms':>9} {'max ms':>7} {'queries':>7} {'db ms':>6}"]
    lines += [
        f"{r['page']:32} {r['median_ms']:>9} {r['max_ms']:>7} {r['queries']:>7} {r['db_ms']:>6}"
        + ("  over 300 ms" if r["median_ms"] > 300 else "")
        for r in rows
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
