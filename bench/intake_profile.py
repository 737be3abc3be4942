#!/usr/bin/env python3
"""Result intake alone: ``POST /api/v1/agent/results/`` for N leased instructions, in process.

    .venv/bin/python -m bench.intake_profile [--assets 2000] [--threads 1]
    make bench-intake INTAKE=2000

The fleet benchmark's "results ingested per second" depends on when agents lease and how the
batch is released; this measures what the server spends per result, whatever the plan. It makes
a new PostgreSQL database on 127.0.0.1 (dropped afterwards), N assets with agents, a batch over
all of them released at once (``RMM_WAVE_SIZE`` = N), leases every instruction through the
heartbeat, then posts every result through Django's test client (the whole request: the agent's
credential, the body, intake, the job's end, the result row, its evidence blob and record, the
history) and prints the rate, the wall and CPU milliseconds per result and the queries per
result. With ``--threads`` > 1 the results are posted from that many threads, each with its own
connection (contention on the history's lock and the database, in one process's GIL).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import threading
import time

from bench.scratch import scratch_database


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--queries", action="store_true", help="also print one result's queries and their times")
    parser.add_argument(
        "--together",
        type=int,
        default=0,
        metavar="N",
        help="take the results in N at a time, as the agent tier does with results that arrive together "
        "(engine.ingest_results, without HTTP); 0: each through its own request",
    )
    parser.add_argument("--profile", metavar="PATH", help="write a cProfile of the posting to PATH (one thread)")
    args = parser.parse_args(argv)

    with scratch_database("rmm_intake"):
        os.environ["RMM_WAVE_SIZE"] = str(args.assets)  # the whole batch in the request
        print(json.dumps(_run(args)), flush=True)


def _run(args) -> dict:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, connections
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from bench.fanout_profile import prepare
    from rmm.engine.services.results import ingest_results
    from rmm.inventory import services as inventory
    from rmm_agent.results import make_result

    call_command("migrate", verbosity=0)
    call, body, credentials = prepare(args.assets)
    call("/api/v1/script-jobs/batch/", "psa", body)
    client = Client()
    results = []
    for credential in credentials.values():
        answer = client.post(
            "/api/v1/agent/heartbeat/",
            data=json.dumps({"agent_version": "0.1.0", "facts_hash": "x", "running": [], "capacity": 4}),
            content_type="application/json",
            HTTP_AUTHORIZATION=credential,
        )
        leased = answer.json().get("instructions") or []
        if answer.status_code != 200 or len(leased) != 1:
            raise RuntimeError(f"lease: {answer.status_code} {answer.content[:300]!r}")
        instruction_id = json.loads(leased[0]["payload"])["instruction_id"]
        body = make_result(instruction_id, "completed", exit_code=0, stdout="ok\n")
        results.append((credential, json.dumps(body)))
    agents = {credential: inventory.authenticate_agent(credential) for credential, _ in results}
    connection.close()

    failures: list[str] = []
    queries = [0]

    def post(share: list[tuple[str, str]], count_queries: bool) -> None:
        local = Client()
        context = CaptureQueriesContext(connections["default"]) if count_queries else None
        if context is not None:
            context.__enter__()
        profile = cProfile.Profile() if args.profile and count_queries else None
        if profile is not None:
            profile.enable()
        if args.together:
            for begin in range(0, len(share), args.together):
                chunk = [
                    (agents[credential], json.loads(body)) for credential, body in share[begin : begin + args.together]
                ]
                for answer in ingest_results(chunk):
                    if isinstance(answer, BaseException) or answer[0] not in (200, 201):
                        failures.append(repr(answer)[:200])
        for credential, body in share if not args.together else ():
            answer = local.post(
                "/api/v1/agent/results/", data=body, content_type="application/json", HTTP_AUTHORIZATION=credential
            )
            if answer.status_code not in (200, 201):
                failures.append(f"{answer.status_code} {answer.content[:200]!r}")
        if profile is not None:
            profile.disable()
            profile.dump_stats(args.profile)
        if context is not None:
            context.__exit__(None, None, None)
            queries[0] = len(context.captured_queries)
            if args.queries:
                per = len(context.captured_queries) // len(share)
                for query in context.captured_queries[-per:]:
                    print(f"{float(query['time']) * 1000:7.2f} ms  {query['sql'][:1500]}")
        connections.close_all()

    shares = [results[n :: args.threads] for n in range(args.threads)]
    wall, cpu = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=post, args=(share, n == 0)) for n, share in enumerate(shares)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if failures:
        raise RuntimeError(f"{len(failures)} results refused, e.g. {failures[0]}")
    return {
        "results": len(results),
        "threads": args.threads,
        "together": args.together,
        "results_per_second": round(len(results) / wall, 1),
        "wall_ms_per_result": round(1000 * wall / len(results), 2),
        "cpu_ms_per_result": round(1000 * cpu / len(results), 2),
        "queries_per_result": round(queries[0] / len(shares[0]), 1),
    }


if __name__ == "__main__":
    main()
