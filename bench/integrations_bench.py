"""Integrations benchmark (``make bench-integrations``, docs/performance.md), on the README's
production layout (bench/cluster.py: PostgreSQL, Redis, an agent-tier worker and the task cluster,
all on 127.0.0.1):

- **outbox**: ``--events`` events are emitted, one transaction each as a change emits them (or
  ``--together`` per transaction: ``--together 2000`` makes a backlog at once), for
  one webhook whose receiver is a real HTTP server on 127.0.0.1 (in this process; every request's
  Standard Webhooks signature is checked); the task cluster delivers them. Events per second
  from the first emission to the last verified arrival, and each event's latency (its timestamp to
  its arrival).
- **siem**: a fleet of simulated agents (bench/fleet.py, the real protocol over HTTP) heartbeats at
  ``--heartbeats`` a second (333/s: 10,000 agents at a 30 s interval), without holds, so the rate
  comes from ``--agents`` agents at agents/heartbeats seconds; meanwhile one script job a second
  runs on a random agent (each appends its events to the history) and the feed (the task
  cluster's ``rmm.siem.tasks.follow``) ships the history to a syslog collector on 127.0.0.1. The
  lag (history events after the destination's position, the age of the oldest) is sampled from
  the database every 200 ms through the service the API and the console read it with.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/<db> REDIS_URL=redis://127.0.0.1:6379/<n> \\
        .venv/bin/python -m bench.integrations_bench [--events 2000] [--agents 1000] [--heartbeats 333]

The run's database is a new one on DATABASE_URL's server named after DATABASE_URL's, dropped
afterwards; REDIS_URL's database is flushed before and after. It prints the figures, then JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import threading
import time
import uuid
from collections import Counter
from datetime import datetime

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bench import fleet
from bench.cluster import Cluster
from bench.run import SEED, Api, percentile
from tests.outbox.receivers import Receiver
from tests.siem.collectors import SyslogCollector

WEBHOOK = """
import json
from django.contrib.auth import get_user_model
from rmm.outbox import services as outbox
root = get_user_model().objects.create_superuser("bench-root", password="%(password)s")
endpoint, secret = outbox.create_webhook(root, url="%(url)s", event_types=["agent.online"])
print(json.dumps({"id": str(endpoint.pk), "secret": secret}))
"""

EMIT = """
import json, time, uuid
from django.db import transaction
from rmm.outbox import services as outbox
started = time.time()
for first in range(0, %(events)d, %(together)d):
    with transaction.atomic():
        outbox.emit_many([outbox.Emitted("agent.online", "inventory.agent", str(uuid.uuid4()), None,
                                         {"n": n, "hostname": f"bench-{n:05d}"})
                          for n in range(first, min(first + %(together)d, %(events)d))])
print(json.dumps({"started": started, "ended": time.time()}))
"""

DESTINATION = """
import json
from django.contrib.auth import get_user_model
from rmm.siem import services as siem
root = get_user_model().objects.create_superuser("bench-siem", password="%(password)s")
made = siem.create_destination(root, kind="syslog", address="%(address)s")
print(json.dumps({"id": str(made.pk)}))
"""


def outbox_run(cluster: Cluster, events: int, together: int) -> dict:
    """Every request's signature is checked once the run is over (the receiver only keeps them)."""
    receiver = Receiver()
    try:
        made = cluster.shell(WEBHOOK % {"password": uuid.uuid4().hex, "url": receiver.url})
        emitted = cluster.shell(EMIT % {"events": events, "together": together})
        deadline = time.monotonic() + 600
        while len(receiver.calls) < events and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        receiver.close()
    arrivals, forged, repeats = {}, 0, 0
    for call in receiver.calls:
        try:
            body = Webhook(made["secret"]).verify(call["raw"], call["headers"])
        except WebhookVerificationError:
            forged += 1
            continue
        if call["headers"]["webhook-id"] in arrivals:
            repeats += 1
        else:
            arrivals[call["headers"]["webhook-id"]] = (
                call["at"],
                datetime.fromisoformat(body["timestamp"]).timestamp(),
            )
    last = max((at for at, _ in arrivals.values()), default=emitted["ended"])
    latencies = [at - stamp for at, stamp in arrivals.values()]
    return {
        "events": events,
        "received": len(arrivals),
        "forged": forged,
        "repeats": repeats,
        "emitted_per_second": round(events / (emitted["ended"] - emitted["started"]), 1),
        "delivered_per_second": round(len(arrivals) / (last - emitted["started"]), 1),
        "latency_seconds_p50": round(percentile(latencies, 50), 3),
        "latency_seconds_p99": round(percentile(latencies, 99), 3),
    }


def use_database(cluster: Cluster) -> None:
    """Django in this process, on the cluster's database, to read the lag as the product does."""
    for name in ("DATABASE_URL", "REDIS_URL", "RMM_VAR_DIR"):
        os.environ[name] = cluster.env[name]
    os.environ["DJANGO_SETTINGS_MODULE"] = "rmm.settings"
    import django

    django.setup()


def lag_sample(destination_id: str):
    """The destination's lag as its API and console read it (rmm.siem.services.lag)."""
    from rmm.siem import services as siem
    from rmm.siem.models import Destination

    return siem.lag(Destination.objects.prefetch_related("sites").get(pk=destination_id))


def siem_run(cluster: Cluster, agents: int, heartbeats: float, seconds: float, sim: int) -> dict:
    interval = agents / heartbeats
    seed = cluster.shell(SEED % {"uses": agents})
    tokens = seed["tokens"]
    api = Api(cluster.api_urls[0])
    script = api.call(
        "POST", "/api/v1/scripts/", tokens["technician"], {"name": "bench", "language": "sh", "content": "true\n"}
    )
    api.call("POST", f"/api/v1/scripts/{script['id']}/approve/", tokens["approver"])
    case_id, task_id = str(uuid.uuid4()), str(uuid.uuid4())
    api.call(
        "PUT", f"/api/v1/psa/cases/{case_id}/", tokens["psa"], {"title": "b", "status": "approved", "site": "bench"}
    )
    api.call(
        "PUT", f"/api/v1/psa/tasks/{task_id}/", tokens["psa"], {"case": case_id, "title": "b", "status": "approved"}
    )
    context = multiprocessing.get_context("spawn")
    pipes, procs = [], []
    for n in range(sim):
        ours, theirs = context.Pipe()
        proc = context.Process(target=fleet.worker, args=(theirs, cluster.agent_urls, 2000 + n, None), daemon=True)
        proc.start()
        pipes.append(ours)
        procs.append(proc)

    def every(command: str, args_of) -> list:
        for n, pipe in enumerate(pipes):
            pipe.send((command, args_of(n)))
        return [pipe.recv() for pipe in pipes]

    collector = SyslogCollector()
    try:
        names = [f"sim-{n:05d}" for n in range(agents)]
        print(f"siem: enrolling {agents} agents ...", flush=True)
        enrolled = every("enroll", lambda n: {"token": seed["enrollment"], "names": names[n::sim], "concurrency": 16})
        online = [asset for part in enrolled for _, asset in part["agents"]]
        made = cluster.shell(DESTINATION % {"password": uuid.uuid4().hex, "address": collector.address})
        print(f"siem: {len(online)} agents at {interval:.1f} s without holds; waiting for the feed ...", flush=True)
        every("fleet_start", lambda n: {"interval": interval, "facts_change": 0.0, "hold": False})
        jobs, stop = [0], threading.Event()

        def probe() -> None:
            while not stop.is_set():
                api.call(
                    "POST",
                    "/api/v1/script-jobs/",
                    tokens["psa"],
                    {"script": script["id"], "asset": random.choice(online), "psa_task_id": task_id},  # noqa: S311
                )
                jobs[0] += 1
                stop.wait(1)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        use_database(cluster)
        from django.db import connection

        from rmm.siem import services as siem

        deadline = time.monotonic() + 90  # the feed's first run: the task cluster's next minute
        while not collector.messages and time.monotonic() < deadline:
            time.sleep(0.2)
        head0 = siem.head()
        samples, started, opened = [], time.monotonic(), time.time()
        while time.monotonic() - started < seconds:
            samples.append(lag_sample(made["id"]))
            time.sleep(0.2)
        head1 = siem.head()
        closed = time.time()
        connection.close()
        stop.set()
        prober.join()
        records = every("fleet_stop", lambda n: {})
        beats = [beat for part in records for beat in part["records"]["heartbeats"]]
        window = [beat for beat in beats if opened <= beat[0] < closed]
        events, ages = [s.events for s in samples], [s.seconds for s in samples]
        return {
            "agents": len(online),
            "interval_seconds": round(interval, 2),
            "heartbeats_per_second": round(len(window) / (closed - opened), 1),
            "heartbeat_outcomes": dict(Counter(beat[2] for beat in window)),
            "jobs_created": jobs[0],
            "history_events_per_second": round((head1 - head0) / seconds, 1),
            "records_received": len(collector.messages),
            "lag_events_p50": percentile(events, 50),
            "lag_events_p99": percentile(events, 99),
            "lag_events_max": max(events),
            "lag_seconds_p50": round(percentile(ages, 50), 3),
            "lag_seconds_p99": round(percentile(ages, 99), 3),
            "lag_seconds_max": round(max(ages), 3),
        }
    finally:
        for pipe in pipes:
            with contextlib.suppress(OSError):
                pipe.send(("exit", {}))
        for proc in procs:
            proc.join(10)
        collector.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000, help="outbox: events emitted")
    parser.add_argument(
        "--together", type=int, default=1, help="outbox: events per transaction (all of them: a backlog at once)"
    )
    parser.add_argument("--agents", type=int, default=1000, help="siem: simulated agents")
    parser.add_argument("--heartbeats", type=float, default=333, help="siem: heartbeats a second")
    parser.add_argument("--seconds", type=float, default=60, help="siem: measured window")
    parser.add_argument("--sim", type=int, default=1, help="siem: simulator processes")
    parser.add_argument("--workers", type=int, default=2, help="agent-tier worker processes")
    parser.add_argument("--only", choices=["outbox", "siem"], default="", help="one of the two")
    args = parser.parse_args()
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/rmm")
    server, mine = base.rsplit("/", 1)
    cluster = Cluster(
        workers=args.workers,
        api_workers=0,
        pg_url=server,
        redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15"),
        extra_env={"RMM_WEBHOOK_ALLOW_PRIVATE": "1", "RMM_ENROLLMENT_TOKEN_USES": str(args.agents)},
    )
    cluster.dbname = f"{mine}_bench_{uuid.uuid4().hex[:8]}"
    cluster.env["DATABASE_URL"] = f"{server}/{cluster.dbname}"
    print(f"starting {args.workers} workers and the task cluster on {cluster.dbname} ...", flush=True)
    result = {"load_average_before": os.getloadavg()}
    cluster.start()
    try:
        if args.only in ("", "outbox"):
            result["outbox"] = outbox_run(cluster, args.events, args.together)
            o = result["outbox"]
            print(
                f"outbox: {o['received']}/{o['events']} events received and verified, "
                f"{o['delivered_per_second']} events/s delivered (emitted at {o['emitted_per_second']}/s); "
                f"latency p50 {o['latency_seconds_p50']} s, p99 {o['latency_seconds_p99']} s; "
                f"{o['forged']} forged, {o['repeats']} repeats",
                flush=True,
            )
        if args.only in ("", "siem"):
            result["siem"] = siem_run(cluster, args.agents, args.heartbeats, args.seconds, args.sim)
            s = result["siem"]
            print(
                f"siem: {s['heartbeats_per_second']} heartbeats/s from {s['agents']} agents "
                f"({s['heartbeat_outcomes']}), {s['history_events_per_second']} history events/s; lag p50 "
                f"{s['lag_events_p50']} events / {s['lag_seconds_p50']} s, p99 {s['lag_events_p99']} / "
                f"{s['lag_seconds_p99']} s, max {s['lag_events_max']} / {s['lag_seconds_max']} s",
                flush=True,
            )
    finally:
        result["load_average_after"] = os.getloadavg()
        cluster.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
