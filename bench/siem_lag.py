#!/usr/bin/env python3
"""SIEM feed benchmark: how far the feed lags behind the history while events are appended.

    .venv/bin/python bench/siem_lag.py [--rate 333] [--seconds 30] [--format json|cef]

A throwaway database (SQLite in a temporary folder, or, when DATABASE_URL points at PostgreSQL, a
new database on that server, dropped afterwards). One thread appends history events at ``--rate``
a second (one transaction each, as the engine's services do); the feed (rmm.siem.services.follow,
as the task cluster runs it) ships them to a syslog collector on 127.0.0.1 that reads RFC 6587
frames; the main thread samples the lag (history events after the destination's position, and
the age of the oldest of them) every 100 ms. It prints the figures, then one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * p), len(ordered) - 1)] if ordered else 0.0


def run(rate: float, seconds: float, fmt: str) -> dict:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rmm.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    settings.RMM_WEBHOOK_ALLOW_PRIVATE = True
    from django.contrib.auth import get_user_model

    from rmm.history import services as history
    from rmm.siem import services as siem
    from rmm.siem.models import Destination
    from tests.siem.collectors import SyslogCollector

    collector = SyslogCollector()
    root = get_user_model().objects.create_superuser("bench-root", password=uuid.uuid4().hex)
    destination = siem.create_destination(root, kind="syslog", address=collector.address, format=fmt)
    stop = threading.Event()
    appended = [0]

    def append() -> None:
        start, n = time.monotonic(), 0
        while not stop.is_set():
            n += 1
            history.append("agent:bench", "bench.heartbeat", payload={"n": n, "text": "x" * 200})
            appended[0] = n
            pause = start + n / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        connection.close()

    def follow() -> None:
        while not stop.is_set():
            siem.follow(seconds=1)
        connection.close()

    threads = [threading.Thread(target=append), threading.Thread(target=follow)]
    for thread in threads:
        thread.start()
    samples_events, samples_seconds = [], []
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        time.sleep(0.1)
        row = Destination.objects.get(pk=destination.pk)
        lag = siem.lag(row)
        samples_events.append(lag.events)
        samples_seconds.append(lag.seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    siem.ship(destination.pk, budget_seconds=60)
    head = siem.head()
    received = [int(m.split(b'sequence="', 1)[1].split(b'"', 1)[0]) for m in collector.messages]
    collector.close()
    return {
        "database": connection.vendor,
        "format": fmt,
        "rate_asked": rate,
        "appended_per_second": round(appended[0] / elapsed, 1),
        "records_received": len(received),
        "in_chain_order": received == list(range(received[0], head + 1)) if received else False,
        "history_events": head,
        "lag_events_p50": percentile(samples_events, 0.5),
        "lag_events_p99": percentile(samples_events, 0.99),
        "lag_events_max": max(samples_events),
        "lag_seconds_p50": round(percentile(samples_seconds, 0.5), 3),
        "lag_seconds_p99": round(percentile(samples_seconds, 0.99), 3),
        "lag_seconds_max": round(max(samples_seconds), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=333)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--format", choices=["json", "cef"], default="json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(args.rate, args.seconds, args.format)))
        return
    with tempfile.TemporaryDirectory(prefix="rmm-siem-bench-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        env.update(RMM_VAR_DIR=str(Path(tmp) / "var"), RMM_LOG_LEVEL="ERROR", RMM_SIEM_POLL_SECONDS="0.05")
        base, pg_admin, dbname = os.environ.get("DATABASE_URL", ""), None, None
        if base.startswith("postgres"):
            import psycopg

            dbname = f"rmm_siembench_{uuid.uuid4().hex[:10]}"
            pg_admin = base.rsplit("/", 1)[0] + "/postgres"
            with psycopg.connect(pg_admin, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{dbname}"')
            env["DATABASE_URL"] = base.rsplit("/", 1)[0] + "/" + dbname
        else:
            env.pop("DATABASE_URL", None)
            env["RMM_SQLITE_PATH"] = str(Path(tmp) / "bench.sqlite3")
        try:
            command = [sys.executable, __file__, "--child", "--rate", str(args.rate), "--seconds", str(args.seconds)]
            done = subprocess.run(  # noqa: S603 - this script, again
                [*command, "--format", args.format], env=env, cwd=ROOT, capture_output=True, text=True, check=False
            )
            if done.returncode:
                sys.exit(done.stderr)
            result = json.loads(done.stdout.strip().splitlines()[-1])
        finally:
            if dbname:
                with psycopg.connect(pg_admin, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    print(
        f"{result['database']}, {result['format']}: {result['appended_per_second']} events/s appended; "
        f"lag p50 {result['lag_events_p50']} events / {result['lag_seconds_p50']} s, "
        f"p99 {result['lag_events_p99']} / {result['lag_seconds_p99']} s, "
        f"max {result['lag_events_max']} / {result['lag_seconds_max']} s; "
        f"{result['records_received']} records received of {result['history_events']} events, "
        f"{'in chain order' if result['in_chain_order'] else 'NOT IN CHAIN ORDER'}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
