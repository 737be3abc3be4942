#!/usr/bin/env python3
"""Configuration audits at fleet scale: one audit result of 50 items for each of N assets, then the
fleet compliance summary over N × 50 observations, on PostgreSQL.

    .venv/bin/python -m bench.profiles_bench [--assets 10000] [--items 50] [--runs 5]
    make bench-profiles PROFILE_ASSETS=10000

It makes a new PostgreSQL database on 127.0.0.1 (dropped afterwards), a site of N assets with
agents, an approved key and a profile of ``--items`` items, assigns it to the site and asks for
its audit through the API (one batch of N jobs, all released at once), leases every instruction,
then takes each asset's result in through the engine (``engine.ingest_result``, as the agent
endpoint does after the credential: the job's end, the result row, the comparison, the
observations upserted, drift, the evidence, the history). Every fifth asset has its first item
drifted (a drift event, a drift report and ``drift.detected`` each). It prints the results per
second, the queries per result (the first, second and last: the last also ends the batch), and the
compliance summary's median and slowest time (``profiles.compliance.summary`` over every site).
docs/performance.md has the figures.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import json
import os
import statistics
import time

from bench.scratch import scratch_database


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=int, default=10_000, help="assets observed (the summary's fleet)")
    parser.add_argument(
        "--ingest",
        type=int,
        default=10_000,
        help="of them, how many have their audit result taken in through the engine; the rest of the "
        "observations are written in bulk, as those results would leave them",
    )
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5, help="summary runs (after one to warm up)")
    parser.add_argument("--profile", metavar="PATH", help="write a cProfile of the results' intake to PATH")
    args = parser.parse_args(argv)
    with scratch_database("rmm_profiles"):
        os.environ["RMM_WAVE_SIZE"] = str(args.assets)  # the whole batch released in the request
        print(json.dumps(_run(args)), flush=True)


def _document(items, drifted: bool) -> dict:
    entries = []
    for n, item in enumerate(items):
        out = b"drifted\n" if drifted and n == 0 else b"v\n"
        entries.append(
            {"item": str(item.pk), "exit_code": 0, "stdout_bytes": len(out), "stdout": base64.b64encode(out).decode()}
        )
    return {"format": "rmm.profile_audit/1", "items": entries}


def _seed_rest(count: int, items, job_id) -> None:
    """``count`` more assets, in a second site, with the observations one audit each would leave
    (every fifth with its first item drifted), written in bulk: the summary's fleet at full size
    without taking every result in. They cite one real audit job (the table wants one)."""
    if count <= 0:
        return
    from django.utils import timezone

    from profiles import counts
    from profiles.models import ConfigurationObservation
    from rmm.inventory import services as inventory
    from rmm.inventory.models import Asset

    site = inventory.get_or_create_site("bench-seeded", actor="cli:bench")
    assets = [Asset(site=site, hostname=f"seeded-{n:05d}", os="Linux", architecture="x86_64") for n in range(count)]
    Asset.objects.bulk_create(assets, batch_size=2000)
    now, revision = timezone.now(), items[0].revision_id
    rows = []
    for n, asset in enumerate(assets):
        for position, item in enumerate(items):
            drifted = n % 5 == 0 and position == 0
            state = "non_compliant" if drifted else "compliant"
            rows.append(
                ConfigurationObservation(
                    asset=asset,
                    item=item,
                    profile_revision_id=revision,
                    observed_value="drifted" if drifted else "v",
                    observed_at=now,
                    compliant=not drifted,
                    state=state,
                    known_state=state,
                    exit_code=0,
                    audit_job_id=job_id,
                )
            )
        if len(rows) >= 20_000:
            ConfigurationObservation.objects.bulk_create(rows)
            rows = []
    ConfigurationObservation.objects.bulk_create(rows)
    counts.recount(profile_revision_id=revision)  # what each of those results' intake would have left
    from django.db import connection

    with connection.cursor() as cursor:
        # as autovacuum leaves tables at rest
        cursor.execute("VACUUM ANALYZE configuration_observations")
        cursor.execute("VACUUM ANALYZE configuration_compliance_counts")


def _run(args) -> dict:
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from bench.fanout_profile import prepare
    from profiles import compliance
    from profiles import services as profiles
    from profiles.models import ConfigurationObservation, ConfigurationProfile
    from rmm.artefacts import services as artefacts
    from rmm.engine import services as engine
    from rmm.inventory.models import Agent, Site
    from rmm_agent.results import make_result
    from scripting import services as scripting

    call_command("migrate", verbosity=0)
    ingest_count = min(args.ingest, args.assets)
    call, body, _ = prepare(ingest_count)
    users = get_user_model().objects
    tech, boss = users.get(username="bench-tech"), users.get(username="bench-approver")
    read = scripting.approve_script(
        scripting.create_script(tech, name="bench.echo.read", language="sh", content='printf "%s\\n" v\n'), boss
    )
    key = profiles.create_config_key(
        tech,
        name="bench.echo",
        platform="linux",
        value_type="string",
        comparisons=["equals"],
        parameters=[{"name": "value", "description": "echoed"}],
        read_script=read,
        set_script=None,
    )
    artefacts.decide(key, boss, approve=True)
    items = [
        {"config_key": "bench.echo", "parameters": {"value": str(n)}, "desired_value": "v", "comparison": "equals"}
        for n in range(args.items)
    ]
    profile = call("/api/v1/profiles/", "technician", {"name": "bench", "profile_type": "hardening", "items": items})
    site = Site.objects.get(name="bench")
    assignment = call(
        "/api/v1/profile-assignments/",
        "technician",
        {"profile": profile["id"], "site": str(site.pk), "psa_task_id": body["psa_task_id"]},
    )
    started = time.perf_counter()
    jobs = call(f"/api/v1/profile-assignments/{assignment['id']}/audit/", "psa")["jobs"]
    requested = time.perf_counter() - started
    revision_items = list(ConfigurationProfile.objects.get(pk=profile["id"]).current_revision.items.all())
    revision_items.sort(key=lambda item: item.position)
    agents = list(Agent.objects.filter(asset__site=site).order_by("asset__hostname"))
    now = timezone.now()
    leased = []
    for agent in agents:
        [inst] = engine.lease(agent, 4, now)
        leased.append((agent, inst))
    queries = []
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    started = time.perf_counter()
    for n, (agent, inst) in enumerate(leased):
        result = make_result(
            str(inst.pk), "completed", exit_code=0, stdout=json.dumps(_document(revision_items, n % 5 == 0)).encode()
        )
        if n in (0, 1, len(leased) - 1):
            with CaptureQueriesContext(connection) as seen:
                status, _ = engine.ingest_result(agent, result)
            queries.append(len(seen))
        else:
            status, _ = engine.ingest_result(agent, result)
        if status != 201:
            raise RuntimeError(f"result {n}: {status}")
    ingest = time.perf_counter() - started
    _seed_rest(args.assets - ingest_count, revision_items, jobs[0])
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
    observations = ConfigurationObservation.objects.count()
    sites = Site.objects.all()  # an admin's view: every site
    list(compliance.summary(sites))  # warm up
    times = []
    for _ in range(args.runs):
        started = time.perf_counter()
        rows = list(compliance.summary(sites))
        times.append(time.perf_counter() - started)
    return {
        "assets": args.assets,
        "results_taken_in": len(leased),
        "items": args.items,
        "audit_jobs": len(jobs),
        "request_audit_s": round(requested, 1),
        "results_per_s": round(len(leased) / ingest, 1),
        "ms_per_result": round(ingest * 1000 / len(leased), 2),
        "queries_per_result": queries,
        "observations": observations,
        "summary_median_ms": round(statistics.median(times) * 1000, 1),
        "summary_max_ms": round(max(times) * 1000, 1),
        "summary_rows": [
            {k: row[k] for k in ("profile_name", "site_name", "observed", "compliant_count", "percent")} for row in rows
        ],
    }


if __name__ == "__main__":
    main()
