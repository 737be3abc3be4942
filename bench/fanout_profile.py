#!/usr/bin/env python3
"""The fan-out alone: ``POST /api/v1/script-jobs/batch/`` over N assets, in process, no fleet.

    .venv/bin/python -m bench.fanout_profile [--assets 10000] [--content-kib 0] [--runs 3] [--plan JSON]
    make bench-fanout FANOUT=2000 BENCH_ARGS="--content-kib 64"
    make bench-fanout BENCH_ARGS='--plan {"canary":500,"ring_size":2000}'  # a batch released in rings

The fleet benchmark measures the fan-out while 10,000 agents heartbeat; this measures what the
batch itself costs, so that a change to it can be judged without the fleet's noise. It makes a
new PostgreSQL database on 127.0.0.1 (dropped afterwards), N assets with agents, an approved
script of the given size and PSA authority, then posts the batch ``--runs`` times through
Django's test client (the whole request: authentication, validation, the service, the answer)
and prints the wall and CPU seconds of each.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import secrets
import time
import uuid

from bench.scratch import scratch_database


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=int, default=10_000)
    parser.add_argument("--content-kib", type=int, default=0, help="script size beyond one line")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--plan", type=json.loads, default=None, help="the batch's plan (JSON); none: the waves")
    args = parser.parse_args(argv)

    with scratch_database("rmm_fanout"):
        for figures in _runs(args):
            print(json.dumps(figures), flush=True)


def prepare(count: int, content_kib: int = 0):
    """A site of ``count`` assets with enrolled agents, an approved script and PSA authority
    through the API; returns the API caller, the batch's body and each asset's agent credential."""
    from django.core.management import call_command
    from django.test import Client

    from rmm.inventory import services as inventory
    from rmm.inventory.models import Agent, Asset

    site = inventory.get_or_create_site("bench", actor="cli:bench")
    # the bench PSA requests jobs on authority it writes itself: its site allows that
    inventory.set_site_policy("cli:bench", site, allow_self_authorized_jobs=True)
    tokens = {}
    for user, role in (("bench-psa", "psa"), ("bench-tech", "technician"), ("bench-approver", "approver")):
        out = io.StringIO()
        call_command("rmm_token", user, role=role, site=["bench"], stdout=out)
        tokens[role] = out.getvalue().strip()
    assets = [Asset(site=site, hostname=f"asset-{n:05d}", os="Linux", architecture="x86_64") for n in range(count)]
    Asset.objects.bulk_create(assets, batch_size=2000)
    credentials = {asset.pk: secrets.token_urlsafe(24) for asset in assets}
    agents = [Agent(asset=a, secret_hash=inventory.hash_secret(credentials[a.pk])) for a in assets]
    Agent.objects.bulk_create(agents, batch_size=2000)
    client = Client()

    def call(path: str, role: str, body: dict | None = None, method: str = "post") -> dict:
        answer = getattr(client, method)(
            path,
            data=json.dumps(body or {}),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {tokens[role]}",
        )
        if answer.status_code >= 300:
            raise RuntimeError(f"{path}: {answer.status_code} {answer.content[:500]!r}")
        return answer.json()

    content = "true\n" + "#" * 1024 * content_kib
    script = call("/api/v1/scripts/", "technician", {"name": "bench", "language": "sh", "content": content})
    call(f"/api/v1/scripts/{script['id']}/approve/", "approver")
    case_id, task_id = str(uuid.uuid4()), str(uuid.uuid4())
    call(f"/api/v1/psa/cases/{case_id}/", "psa", {"title": "bench", "status": "approved", "site": "bench"}, "put")
    call(f"/api/v1/psa/tasks/{task_id}/", "psa", {"case": case_id, "title": "bench", "status": "approved"}, "put")
    body = {"script": script["id"], "assets": [str(a.pk) for a in assets], "psa_task_id": task_id}
    return (
        call,
        body,
        {asset.pk: f"Agent {agent.pk}:{credentials[asset.pk]}" for asset, agent in zip(assets, agents, strict=True)},
    )


def _runs(args):
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call, body, _ = prepare(args.assets, args.content_kib)
    if args.plan is not None:
        body["plan"] = args.plan
    gc.freeze()  # as a worker does (rmm/asgi.py)
    gc.set_threshold(*settings.RMM_GC_THRESHOLDS)
    for run in range(args.runs):
        wall, cpu = time.perf_counter(), time.process_time()
        answer = call("/api/v1/script-jobs/batch/", "psa", body)
        yield {
            "run": run,
            "assets": answer["count"],
            "content_kib": args.content_kib,
            "plan": args.plan,
            "wall_seconds": round(time.perf_counter() - wall, 2),
            "cpu_seconds": round(time.process_time() - cpu, 2),
        }


if __name__ == "__main__":
    main()
