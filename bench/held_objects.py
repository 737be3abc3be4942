#!/usr/bin/env python3
"""What a held heartbeat keeps alive: the objects the garbage collector tracks, per heartbeat.

    .venv/bin/python -m bench.held_objects [--agents 1000]

Every held heartbeat's objects live for up to one interval, so the young collections promote
all of them and a full collection scans them (docs/performance.md, "Young collections"). This
enrolls N agents on a throwaway PostgreSQL database (``bench/scratch.py``), holds one heartbeat
of each in one event loop through the agent ASGI handler, as a worker does, and prints how many
tracked objects each keeps, the commonest types, and how long a full collection takes then.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
from collections import Counter

from bench.scratch import scratch_database


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1000)
    args = parser.parse_args(argv)
    with scratch_database("rmm_held"):
        print(json.dumps(asyncio.run(_held(_enroll(args.agents)))), flush=True)


def _enroll(count: int) -> list[str]:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connections

    from rmm.inventory import services as inventory

    call_command("migrate", verbosity=0)
    site = inventory.get_or_create_site("held", actor="cli:bench")
    _, secret = inventory.create_enrollment_token(site, actor="cli:bench", max_uses=count)
    auths = []
    for n in range(count):
        facts = {"hostname": f"held-{n:05d}", "os": "Linux", "architecture": "x86_64"}
        agent, agent_secret = inventory.enroll_agent(secret, facts)
        auths.append(f"Agent {agent.pk}:{agent_secret}")
    connections.close_all()
    return auths


async def _held(auths: list[str]) -> dict:
    from rmm.asgi import application
    from rmm.engine import wakeups

    leave = asyncio.Event()
    gc.collect()
    gc.freeze()  # as a worker does after start-up (rmm/asgi.py)
    calls = [asyncio.create_task(_heartbeat(application, auth, leave)) for auth in auths]
    deadline = time.monotonic() + 120
    while _holding(wakeups) < len(auths) and time.monotonic() < deadline:  # each past its look for work
        await asyncio.sleep(0.2)
    gc.collect()
    tracked = gc.get_objects()
    started = time.perf_counter()
    gc.collect()
    full_ms = (time.perf_counter() - started) * 1000
    figures = {
        "held": len(wakeups._waiting),
        "tracked_objects_per_held_heartbeat": round(len(tracked) / max(1, len(wakeups._waiting)), 1),
        "full_collection_ms": round(full_ms, 1),
        "commonest_types": Counter(type(o).__name__ for o in tracked).most_common(15),
    }
    del tracked
    leave.set()
    await asyncio.gather(*calls, return_exceptions=True)
    return figures


def _holding(wakeups) -> int:
    return sum(1 for group in list(wakeups._waiting.values()) for waiter in group if waiter.future is not None)


async def _heartbeat(application, auth: str, leave: asyncio.Event) -> None:
    """One idle heartbeat that asks to be held for 30 s; its client leaves when told."""
    body = json.dumps({"capacity": 4, "wait": 30}).encode()
    sent_body = [False]

    async def receive() -> dict:
        if not sent_body[0]:
            sent_body[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        await leave.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        pass

    headers = [(b"host", b"testserver"), (b"content-type", b"application/json"), (b"authorization", auth.encode())]
    scope = {"type": "http", "method": "POST", "path": "/api/v1/agent/heartbeat/", "headers": headers}
    await application(scope, receive, send)


if __name__ == "__main__":
    main()
