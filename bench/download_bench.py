"""Many agents fetching one deployment artefact at once (docs/performance.md, Artefact downloads).

The README's production layout (bench/cluster.py) on a fresh PostgreSQL database: a package of
``--mib`` random bytes is registered and approved, then deployed through the API to ``--agents``
simulated agents in one ring. Each agent heartbeats, leases its install step, verifies the
instruction's signature as ``rmm_agent`` does and streams the artefact from the URL it names,
hashing every byte (the agent's check). Meanwhile ``--watchers`` other agents, in a process of
their own, heartbeat on a short hold: none of their calls may fail. Printed: the transfer's MB/s
against ``cat`` of the stored blob to /dev/null (the machine's limit for reading it), each server
worker's resident memory before, at its peak during the transfer and after, and the watchers'
outcomes. With
``--proxy nginx`` the agents call through the shipped nginx site over https and the workers answer
each checked fetch with ``X-Accel-Redirect`` (RMM_ARTEFACT_ACCEL_REDIRECT): nginx sends the bytes.

    make bench-download            # 1,000 agents, 20 MiB
    make bench-download BENCH_ARGS="--agents 200 --mib 5"
    make bench-download BENCH_ARGS="--proxy nginx"
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import multiprocessing
import os
import resource
import ssl
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from bench.cluster import Cluster, status_mib, tree
from bench.run import SEED, Api, machine, ms, run_and_report
from rmm_agent import keyring
from rmm_agent.protocol import InstructionRefused, verify_instruction

AGENT = "/api/v1/agent/"
CAPABILITIES = ["structured_result", "artefacts"]

# Registers the package from a file in the run's directory and approves it as a second person.
PACKAGE = """
import json
from django.contrib.auth.models import Permission, User
from deployment import services as deployment
from rmm.artefacts import services as artefacts
tech, boss = User.objects.get(username="bench-tech"), User.objects.get(username="bench-approver")
boss.user_permissions.add(Permission.objects.get(codename="approve_privileged"))
boss = User.objects.get(pk=boss.pk)
with open(%(path)r, "rb") as upload:
    made = deployment.register_upload(tech, upload=upload, name="bench-blob", version="1.0-1",
        installer_type="deb", silent_args="", detection={"type": "package", "name": "bench-blob"},
        uninstall_args="")
made = artefacts.decide(made, boss, approve=True)
print(json.dumps({"id": str(made.pk), "hash": made.hash, "status": made.approval_status}))
"""


class Sampler(threading.Thread):
    """Every worker's resident memory (its processes together), every quarter second."""

    def __init__(self, workers: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.workers = workers
        self.samples: dict[str, list[tuple[float, float]]] = {name: [] for name in workers}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            now = time.monotonic()
            for name, pid in self.workers.items():
                self.samples[name].append((now, sum(status_mib(p, "VmRSS") for p in tree(pid))))
            self.stopped.wait(0.25)

    def between(self, start: float, end: float) -> dict[str, float]:
        return {
            name: round(max((mib for at, mib in rows if start <= at <= end), default=0.0), 1)
            for name, rows in self.samples.items()
        }

    def at(self, moment: float) -> dict[str, float]:
        return {
            name: round(min(rows, key=lambda row: abs(row[0] - moment))[1], 1) if rows else 0.0
            for name, rows in self.samples.items()
        }


class Agent:
    def __init__(self, url: str, identity: dict) -> None:
        self.url = url
        self.agent_id = identity["agent_id"]
        self.asset_id = identity["asset_id"]
        self.auth = {"Authorization": f"Agent {identity['agent_id']}:{identity['secret']}"}
        pinned = base64.b64decode(identity["server_public_key"])
        self.keys = {keyring.key_id(pinned): pinned}

    async def heartbeat(self, session: aiohttp.ClientSession, wait: float) -> tuple[int, list]:
        body = {"agent_version": "0.1.0", "protocol": 2, "capabilities": CAPABILITIES, "running": [], "capacity": 1}
        if wait:
            body["wait"] = wait
        timeout = aiohttp.ClientTimeout(total=60 + wait)
        async with session.post(self.url + AGENT + "heartbeat/", json=body, headers=self.auth, timeout=timeout) as r:
            data = await r.json(content_type=None) if r.status == 200 else {}
            return r.status, data.get("instructions") or []


async def enroll(session: aiohttp.ClientSession, urls: list[str], token: str, count: int, prefix: str) -> list[Agent]:
    agents: list[Agent] = []
    names = [f"{prefix}-{n:05d}" for n in range(count)]

    async def runner() -> None:
        while names:
            name = names.pop()
            url = urls[len(names) % len(urls)]
            facts = {"hostname": name, "os": "Linux", "os_version": "Debian GNU/Linux 13", "architecture": "x86_64"}
            body = {"token": token, "facts": facts, "protocol": 2, "capabilities": CAPABILITIES}
            async with session.post(url + AGENT + "enroll/", json=body, timeout=aiohttp.ClientTimeout(60)) as r:
                if r.status != 201:
                    raise RuntimeError(f"enroll: HTTP {r.status} {(await r.text())[:300]}")
                agents.append(Agent(url, await r.json()))

    await asyncio.gather(*(runner() for _ in range(32)))
    return agents


async def fetch(session: aiohttp.ClientSession, agent: Agent, expected: str, outcome: dict) -> None:
    """Heartbeat (held, as ``rmm_agent`` does) until the install step is leased, then stream its
    artefact, hashing it."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            status, leased = await agent.heartbeat(session, 30)  # held until woken, as rmm_agent's
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, leased = type(exc).__name__, []
        if status != 200:
            outcome["errors"].append(f"heartbeat: {status}")
            await asyncio.sleep(1)
            continue
        for envelope in leased:
            try:
                payload = verify_instruction(envelope, agent.keys, agent.agent_id, datetime.now(UTC))
            except InstructionRefused as refusal:
                outcome["errors"].append(f"refused: {refusal.reason}")
                return
            for item in payload.get("artefacts") or []:
                await download(session, agent, item, expected, outcome)
                return
    outcome["errors"].append("no install step leased within 300 s")


async def download(session: aiohttp.ClientSession, agent: Agent, item: dict, expected: str, outcome: dict) -> None:
    """Stream one artefact, hashing it; a cut transfer resumes with Range from the bytes already
    received, as ``rmm_agent.artefacts`` does (up to five times)."""
    digest, size, cuts = hashlib.sha256(), 0, 0
    started = time.monotonic()
    while True:
        headers = agent.auth | ({"Range": f"bytes={size}-"} if size else {})
        try:
            async with session.get(
                agent.url + item["url"], headers=headers, timeout=aiohttp.ClientTimeout(total=900)
            ) as r:
                if r.status not in (200, 206):
                    outcome["errors"].append(f"artefact HTTP {r.status}")
                    return
                async for chunk in r.content.iter_chunked(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
            break
        except (aiohttp.ClientError, TimeoutError) as exc:
            cuts += 1
            outcome["cuts"].append(type(exc).__name__)
            if cuts > 5:
                outcome["errors"].append(f"artefact cut {cuts} times")
                return
    ended = time.monotonic()
    if digest.hexdigest() != expected or size != item["size"]:
        outcome["errors"].append("artefact hash or size mismatch")
        return
    outcome["fetches"].append((started, ended, size))


async def watch(session: aiohttp.ClientSession, agent: Agent, hold: float, stop: asyncio.Event, seen: list) -> None:
    """Heartbeat on a short hold until stopped, keeping (seconds beyond the hold, outcome)."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            status, _ = await agent.heartbeat(session, hold)
            outcome = "ok" if status == 200 else f"HTTP {status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome = type(exc).__name__
        seen.append((max(0.0, time.monotonic() - started - hold), outcome))


def watchers_process(conn, urls: list[str], token: str, count: int, hold: float, ca: str | None) -> None:
    """The watchers in a process of their own, so that the downloaders' hashing does not delay
    their event loop: enroll, say how many, heartbeat until told to stop, send what they saw."""

    async def main() -> None:
        tls = ssl.create_default_context(cafile=ca) if ca else True
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ssl=tls)
        async with aiohttp.ClientSession(connector=connector, skip_auto_headers=["Accept-Encoding"]) as session:
            agents = await enroll(session, urls, token, count, "hb")
            conn.send(len(agents))
            stop, seen = asyncio.Event(), []
            watching = [asyncio.create_task(watch(session, agent, hold, stop, seen)) for agent in agents]
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)
            stop.set()
            await asyncio.gather(*watching, return_exceptions=True)
            conn.send(seen)

    asyncio.run(main())


def cat_seconds(path: Path) -> float:
    """Best of three ``cat FILE > /dev/null``: how fast this machine reads the stored blob."""
    best = float("inf")
    for _ in range(3):
        began = time.monotonic()
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
        best = min(best, time.monotonic() - began)
    return best


async def drive(cluster: Cluster, o: argparse.Namespace, report: dict) -> None:
    seed = cluster.shell(SEED % {"uses": o.agents + o.watchers})
    tokens = seed["tokens"]
    api = Api(cluster.api_urls[0])
    blob = cluster.tmp / "package.bin"
    with open(blob, "wb") as out:
        for _ in range(o.mib):
            out.write(os.urandom(1 << 20))
    package = cluster.shell(PACKAGE % {"path": str(blob)})
    if package["status"] != "approved":
        raise RuntimeError(f"the package was not approved: {package}")
    stored = Path(cluster.env["RMM_VAR_DIR"])
    found = [p for p in stored.rglob(package["hash"] + "*") if p.is_file()]
    cat = cat_seconds(found[0] if found else blob)
    case_id, task_id = str(uuid.uuid4()), str(uuid.uuid4())
    api.call(
        "PUT", f"/api/v1/psa/cases/{case_id}/", tokens["psa"], {"title": "bench", "status": "approved", "site": "bench"}
    )
    api.call(
        "PUT", f"/api/v1/psa/tasks/{task_id}/", tokens["psa"], {"case": case_id, "title": "bench", "status": "approved"}
    )

    tls = ssl.create_default_context(cafile=cluster.ca) if cluster.ca else True
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ssl=tls)
    async with aiohttp.ClientSession(connector=connector, skip_auto_headers=["Accept-Encoding"]) as session:
        print(f"enrolling {o.agents} downloading and {o.watchers} watching agents ...", flush=True)
        takers = await enroll(session, cluster.agent_urls, seed["enrollment"], o.agents, "dl")
        ours, theirs = multiprocessing.get_context("spawn").Pipe()
        args = (theirs, cluster.agent_urls, seed["enrollment"], o.watchers, o.hold, cluster.ca)
        watcher = multiprocessing.get_context("spawn").Process(target=watchers_process, args=args, daemon=True)
        watcher.start()
        watchers = await asyncio.to_thread(ours.recv)
        sampled = {name: proc.pid for name, proc in cluster.procs.items() if name.startswith("worker")}
        if cluster.nginx and cluster.nginx.proc:
            sampled["nginx"] = cluster.nginx.proc.pid
        sampler = Sampler(sampled)
        sampler.start()
        await asyncio.sleep(2)
        idle_at = time.monotonic()
        body = {
            "package": package["id"],
            "assets": [agent.asset_id for agent in takers],
            "psa_task_id": task_id,
            "plan": {"canary": len(takers), "failure_threshold_percent": 100},
        }
        deployed = await asyncio.to_thread(api.call, "POST", "/api/v1/deployments/", tokens["psa"], body, 600)
        print(f"deployment of {deployed['count']} jobs created; the agents fetch ...", flush=True)
        outcome: dict = {"fetches": [], "errors": [], "cuts": []}
        client0 = resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.gather(*(fetch(session, agent, package["hash"], outcome) for agent in takers))
        client1 = resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.sleep(3)
        ours.send("stop")
        seen = await asyncio.to_thread(ours.recv)
        watcher.join(10)
        after_at = time.monotonic()
        sampler.stopped.set()
        sampler.join()

    fetches = outcome["fetches"]
    first = min((start for start, _, _ in fetches), default=idle_at)
    last = max((end for _, end, _ in fetches), default=first)
    total = sum(size for _, _, size in fetches)
    seconds = max(last - first, 1e-9)
    limit = o.mib * (1 << 20) / cat / 1e6
    watcher_outcomes: dict[str, int] = {}
    for _, result in seen:
        watcher_outcomes[result] = watcher_outcomes.get(result, 0) + 1
    report.update(
        {
            "downloads": {
                "completed": len(fetches),
                "agents": o.agents,
                "mib_each": o.mib,
                "seconds": round(seconds, 1),
                "mb_per_second": round(total / seconds / 1e6, 1),
                "per_download": ms([end - start for start, end, _ in fetches]),
                "errors": sorted(set(outcome["errors"]))[:10],
                "error_count": len(outcome["errors"]),
                "resumed_after_a_cut": len(outcome["cuts"]),
            },
            "cat_to_dev_null_mb_per_second": round(limit, 1),
            "share_of_cat": round(total / seconds / 1e6 / limit, 3),
            "server_rss_mib": {
                "idle": sampler.at(idle_at),
                "peak_during": sampler.between(first, last),
                "after": sampler.at(after_at),
            },
            "client_cpu_seconds": round(client1.ru_utime + client1.ru_stime - client0.ru_utime - client0.ru_stime, 1),
            "server_cpu_seconds": {k: round(v, 1) for k, v in cluster.cpu().items()},
            "watchers": {
                "agents": watchers,
                "heartbeats": len(seen),
                "outcomes": watcher_outcomes,
                "beyond_hold": ms([beyond for beyond, result in seen if result == "ok"]),
            },
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--mib", type=int, default=20)
    parser.add_argument("--watchers", type=int, default=200, help="agents heartbeating meanwhile")
    parser.add_argument("--hold", type=float, default=5.0, help="the watchers' heartbeat hold, seconds")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--proxy", choices=["", "nginx"], default="", help="nginx: through the shipped site, bytes by X-Accel-Redirect"
    )
    parser.add_argument("--out", default="", help="also write the report here as JSON")
    o = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    env = {"RMM_WAVE_SIZE": str(o.agents), "RMM_ENROLLMENT_TOKEN_USES": str(o.agents + o.watchers)}
    if o.proxy:  # the worker checks each fetch and names the blob; nginx sends its bytes
        env["RMM_ARTEFACT_ACCEL_REDIRECT"] = "/_blobs/"
    cluster = Cluster(
        workers=o.workers, api_workers=1, interval=30, proxy=o.proxy, agents=o.agents + o.watchers, extra_env=env
    )
    report: dict = {"options": vars(o), "machine": machine(), "load_average_before": os.getloadavg()}
    front = ", nginx in front" if o.proxy else ""
    print(f"starting {o.workers} uvicorn workers, daphne, qcluster{front}, database {cluster.dbname} ...", flush=True)
    run_and_report(cluster, drive, o, report)


if __name__ == "__main__":
    main()
