#!/usr/bin/env python3
"""Compliance export benchmark: N evidence items (100,000 by default) in one export.

    .venv/bin/python bench/export_bench.py [--items N] [--no-verify]
    make bench-export BENCH_ARGS="--items 20000"

It builds a throwaway database: SQLite in a temporary folder, or, when DATABASE_URL points at
PostgreSQL, a new database on that server, dropped afterwards. Items are made in bulk (small
script-result blobs through the evidence store, their history events, bulk-created rows), then
the export runs in a fresh process so that its peak RSS (resource.getrusage) is its own. With
verification on (the default) the bundle is unpacked and its verify.py run, as an auditor would.

It prints the figures, then one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH = 5000
# Run as a script, this folder would come first on sys.path and its modules (report.py, run.py …)
# would shadow top-level names; the project root replaces it.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def django_setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rmm.settings")
    import django

    django.setup()


def phase_setup(items: int) -> dict:
    """Make the items and request the export; the export's id."""
    django_setup()
    from django.core.management import call_command
    from django.utils import timezone

    from evidence import exports
    from evidence import services as evidence
    from evidence.models import RmmEvidence
    from rmm.access import services as access_services
    from rmm.authority.models import PsaCase, PsaTask
    from rmm.history import services as history
    from rmm.inventory.models import Asset, Site

    started = time.monotonic()
    call_command("migrate", verbosity=0)
    site = Site.objects.create(name="bench")
    assets = Asset.objects.bulk_create(
        [Asset(site=site, hostname=f"host-{n:03d}", os="Linux", architecture="x86_64") for n in range(50)]
    )
    case = PsaCase.objects.create(id=uuid.uuid4(), title="Quarterly audit", status="approved", site=site)
    task = PsaTask.objects.create(id=uuid.uuid4(), case=case, title="Patch fleet", status="approved")
    user = access_services.ensure_user_with_role("bench-compliance", "compliance")
    access_services.grant_site(user, None)
    made = 0
    while made < items:
        count = min(BATCH, items - made)
        rows, events = [], []
        for n in range(made, made + count):
            asset = assets[n % len(assets)]
            job_id = uuid.uuid4()
            document = {
                "evidence_type": "script_result",
                "job": {
                    "kind": "script",
                    "id": str(job_id),
                    "status": "succeeded",
                    "requested_by": "tech",
                    "approved_by": None,
                },
                "script": {"name": "collect-inventory", "version": 3, "approved_by": "approver"},
                "authority": {
                    "psa_case_id": str(case.pk),
                    "psa_case_title": case.title,
                    "psa_task_id": str(task.pk),
                    "psa_task_title": task.title,
                },
                "asset": {"id": str(asset.pk), "hostname": asset.hostname, "site": site.name},
                "result": {"outcome": "succeeded", "exit_code": 0, "stdout": f"item {n}\n"},
            }
            digest, uri = evidence.store_blob(evidence.document_bytes(document))
            row = RmmEvidence(
                id=uuid.uuid4(),
                asset=asset,
                site=site,
                evidence_type="script_result",
                related_entity="script_job",
                related_id=job_id,
                psa_case=case,
                psa_task=task,
                storage_uri=uri,
                hash=digest,
                captured_at=timezone.now(),
            )
            rows.append(row)
            events.append(
                history.Event(
                    "system",
                    "evidence.recorded",
                    "evidence.rmmevidence",
                    str(row.pk),
                    site.pk,
                    {"evidence_type": "script_result", "related": f"script_job:{job_id}", "hash": digest},
                )
            )
        for row, sequence in zip(rows, history.append_many(events), strict=True):
            row.history_sequence = sequence
        RmmEvidence.objects.bulk_create(rows, batch_size=1000)
        made += count
    export = exports.request_export(user, site="bench")
    return {"export_id": str(export.pk), "setup_seconds": round(time.monotonic() - started, 1)}


def phase_export(export_id: str) -> dict:
    django_setup()
    from django.core.files.storage import default_storage

    from evidence import exports
    from evidence.models import EvidenceExport

    baseline = rss_mb()
    started = time.monotonic()
    status = exports.run_export(export_id)
    seconds = time.monotonic() - started
    export = EvidenceExport.objects.get(pk=export_id)
    return {
        "status": status,
        "error": export.error,
        "items": export.item_count,
        "export_seconds": round(seconds, 2),
        "items_per_second": round(export.item_count / seconds, 1) if seconds else None,
        "bundle_bytes": export.file_size,
        "bundle_path": default_storage.path(export.file_name),
        "baseline_rss_mb": round(baseline, 1),
        "peak_rss_mb": round(rss_mb(), 1),
    }


def phase_verify(bundle: str, where: str) -> dict:
    started = time.monotonic()
    with zipfile.ZipFile(bundle) as zf:
        zf.extractall(where)
    unzipped = time.monotonic() - started
    (folder,) = [p for p in Path(where).iterdir() if p.is_dir()]
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-I", "verify.py"], cwd=folder, capture_output=True, text=True)
    seconds = time.monotonic() - started
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "unzip_seconds": round(unzipped, 1),
        "verify_seconds": round(seconds, 1),
        "verify_peak_rss_mb": round(child, 1),
        "verdict": done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:],
    }


def child(args: list[str], env: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--no-verify", action="store_true")
    parser.add_argument("--phase", choices=["setup", "export", "verify"], help=argparse.SUPPRESS)
    parser.add_argument("--export-id", help=argparse.SUPPRESS)
    parser.add_argument("--bundle", help=argparse.SUPPRESS)
    parser.add_argument("--where", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "setup":
        print(json.dumps(phase_setup(args.items)))
        return
    if args.phase == "export":
        print(json.dumps(phase_export(args.export_id)))
        return
    if args.phase == "verify":
        print(json.dumps(phase_verify(args.bundle, args.where)))
        return

    with tempfile.TemporaryDirectory(prefix="rmm-export-bench-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        env.update(RMM_VAR_DIR=str(Path(tmp) / "var"), RMM_LOG_LEVEL="ERROR", PYTHONUNBUFFERED="1")
        base = os.environ.get("DATABASE_URL", "")
        pg_admin = dbname = None
        if base.startswith("postgres"):
            import psycopg

            dbname = f"rmm_exportbench_{uuid.uuid4().hex[:10]}"
            pg_admin = base.rsplit("/", 1)[0] + "/postgres"
            with psycopg.connect(pg_admin, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{dbname}"')
            env["DATABASE_URL"] = base.rsplit("/", 1)[0] + "/" + dbname
            database = "postgresql"
        else:
            env.pop("DATABASE_URL", None)
            env["RMM_SQLITE_PATH"] = str(Path(tmp) / "bench.sqlite3")
            database = "sqlite"
        try:
            print(f"Making {args.items} evidence items in a throwaway {database} database…", flush=True)
            setup = child(["--phase", "setup", "--items", str(args.items)], env)
            print(f"  made in {setup['setup_seconds']} s; exporting…", flush=True)
            result = {"database": database, "items_requested": args.items, **setup}
            result.update(child(["--phase", "export", "--export-id", setup["export_id"]], env))
            if result["status"] != "done":
                sys.exit(f"export failed: {result['error']}")
            print(
                f"  export: {result['items']} items in {result['export_seconds']} s "
                f"({result['items_per_second']} items/s), bundle {result['bundle_bytes'] / 1e6:.1f} MB, "
                f"peak RSS {result['peak_rss_mb']} MB (after start-up {result['baseline_rss_mb']} MB)"
            )
            if not args.no_verify:
                where = Path(tmp) / "unpacked"
                where.mkdir()
                result.update(
                    child(["--phase", "verify", "--bundle", result["bundle_path"], "--where", str(where)], env)
                )
                print(
                    f"  auditor: unzip {result['unzip_seconds']} s, verify.py {result['verify_seconds']} s "
                    f"(peak RSS {result['verify_peak_rss_mb']} MB): {result['verdict']}"
                )
            result.pop("bundle_path")
            print(json.dumps(result, sort_keys=True))
        finally:
            if pg_admin:
                import psycopg

                with psycopg.connect(pg_admin, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


if __name__ == "__main__":
    main()
