"""Simulated agents: many per asyncio process, speaking the real agent protocol over HTTP.

Each simulated agent enrolls, then heartbeats back to back as ``rmm_agent`` does, each heartbeat
held by the server for up to one interval (with jitter) while it has nothing for the agent,
carrying the hash of each fact namespace and the bodies of those the server has not acknowledged
(all of them the first time; with ``--facts-change``, that share of heartbeats changes the network
namespace, so only it travels); it verifies every
leased instruction's Ed25519 signature and content hash exactly as ``rmm_agent`` does, "runs"
it for a moment and posts a result whose hash the server checks.

A worker process is driven by the coordinator over a pipe: ``enroll``, ``fleet_start``,
``fleet_stop``, ``saturate``, ``exit``. It answers with raw, timestamped records; the
coordinator computes every figure from them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import resource
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection

import aiohttp

from rmm_agent import keyring
from rmm_agent.protocol import InstructionRefused, canonical_json, facts_hash, merge_diff, verify_instruction
from rmm_agent.results import make_result

AGENT = "/api/v1/agent/"
USER_AGENT = "rmm-bench/1"


def make_namespaces(hostname: str, rng: random.Random) -> dict[str, dict]:
    """Fact namespaces shaped like those the real agent collects (rmm_agent.facts)."""
    return {
        "os": {
            "os": "Linux",
            "os_version": "Debian GNU/Linux 13 (trixie)",
            "kernel": "6.12.0-bench",
            "boot_time": "2026-11-01T00:00:00Z",
        },
        "hardware": {"architecture": "x86_64", "cpu_count": 4},
        "network": {
            "hostname": hostname,
            "addresses": [f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"],
        },
        "agent": {"agent_version": "0.1.0"},
    }


@dataclass
class Records:
    """Everything one worker saw, each entry stamped with wall-clock time."""

    # start, seconds the server took beyond its hold, outcome ("ok", "woken": answered early), leased
    heartbeats: list[tuple[float, float, str, int]] = field(default_factory=list)
    results: list[tuple[float, float, str]] = field(default_factory=list)  # start, seconds, outcome
    leases: list[tuple[str, float]] = field(default_factory=list)  # job id, wall time it arrived
    errors: dict[str, int] = field(default_factory=dict)
    samples: dict[str, str] = field(default_factory=dict)  # one message per error kind

    def error(self, kind: str, message: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.samples.setdefault(kind, message[:300])


async def _json(answer: aiohttp.ClientResponse) -> dict:
    """The answer's JSON object, or the start of whatever else came back (an error page)."""
    raw = await answer.read()
    try:
        data = json.loads(raw)
    except ValueError:
        return {"detail": raw[:200].decode("utf-8", "replace")}
    return data if isinstance(data, dict) else {}


class SimAgent:
    """One enrolled agent and its loop."""

    def __init__(self, sim: Simulator, url: str, identity: dict, namespaces: dict) -> None:
        self.sim, self.url = sim, url
        self.agent_id = identity["agent_id"]
        self.asset_id = identity["asset_id"]
        self.auth = f"Agent {identity['agent_id']}:{identity['secret']}"
        pinned = base64.b64decode(identity["server_public_key"])
        self.keys = {keyring.key_id(pinned): pinned}
        self.namespaces = namespaces
        # Like the real agent: a body until the server acknowledged its hash, then patches against it.
        self.acked: dict[str, str] = {}
        self.acked_bodies: dict[str, dict] = {}
        self.running: set[str] = set()
        self.next_heartbeat = 0.0

    async def post(self, path: str, body: dict, timeout: float) -> tuple[int, dict, float]:
        headers = {"Authorization": self.auth, "User-Agent": USER_AGENT}
        async with self.sim.session.post(
            self.url + path, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as answer:
            data = await _json(answer)
            retry = float(answer.headers.get("Retry-After", "0") or 0)
            return answer.status, data, retry

    def change(self, name: str) -> dict:
        """A changed namespace as ``rmm_agent`` sends it: a patch against the acknowledged body
        when there is one and it is smaller, else the body."""
        body, base = self.namespaces[name], self.acked_bodies.get(name)
        patch = merge_diff(base, body) if base is not None else None
        if patch is not None and len(canonical_json(patch)) < len(canonical_json(body)):
            return {"patch": patch}
        return {"body": body}

    async def heartbeat(self, hold: float) -> float:
        """One heartbeat, held by the server up to ``hold`` seconds; returns the seconds until the
        next one (like ``rmm_agent``: at once after a full hold, 1 s after an early answer)."""
        sim, rec = self.sim, self.sim.records
        if sim.facts_change and sim.rng.random() < sim.facts_change:
            address = f"10.0.{sim.rng.randrange(256)}.{sim.rng.randrange(1, 255)}"
            self.namespaces = {**self.namespaces, "network": {**self.namespaces["network"], "addresses": [address]}}
        hashes = {name: facts_hash(facts) for name, facts in self.namespaces.items()}
        sent = {name: digest for name, digest in hashes.items() if self.acked.get(name) != digest}
        body: dict = {
            "agent_version": "0.1.0",
            "namespaces": {
                name: {"hash": digest, **(self.change(name) if name in sent else {})} for name, digest in hashes.items()
            },
            "running": sorted(self.running),
            "capacity": max(0, 4 - len(self.running)),
        }
        if hold:
            body["wait"] = hold
        started, wall = time.perf_counter(), time.time()
        try:
            status, answer, retry = await self.post(AGENT + "heartbeat/", body, 30 + hold)
        except (aiohttp.ClientError, TimeoutError) as exc:
            rec.heartbeats.append((wall, time.perf_counter() - started, "error", 0))
            rec.error("heartbeat transport", repr(exc))
            return max(0.0, sim.interval - (time.perf_counter() - started))
        elapsed = time.perf_counter() - started
        if status != 200:
            rec.heartbeats.append((wall, elapsed, str(status), 0))
            rec.error(f"heartbeat HTTP {status}", str(answer))
            return retry or sim.interval
        leased = answer.get("instructions") or []
        wanted = answer.get("facts_wanted") or []
        early = bool(leased or answer.get("abort") or answer.get("facts_required") or wanted)
        if early and hold:  # woken, or work at once: how long it waited is not the server's delay
            rec.heartbeats.append((wall, float("nan"), "woken", len(leased)))
        else:  # answered when its hold was up: what came on top is the server's delay
            rec.heartbeats.append((wall, max(0.0, elapsed - hold), "ok", len(leased)))
        if answer.get("facts_required"):
            self.acked, self.acked_bodies = {}, {}
        else:
            self.acked.update(sent)
            self.acked_bodies.update({name: self.namespaces[name] for name in sent})
        for name in wanted:
            self.acked.pop(name, None)
            self.acked_bodies.pop(name, None)
        now = datetime.now(UTC)
        for envelope in leased:
            try:
                payload = verify_instruction(envelope, self.keys, self.agent_id, now)
            except InstructionRefused as refusal:
                rec.error("instruction refused", refusal.reason)
                continue
            rec.leases.append((payload["job_id"], time.time()))
            self.running.add(payload["instruction_id"])
            sim.spawn(self.execute(payload["instruction_id"]))
        if early:
            return 1.0  # from the answer, like rmm_agent: the server counts from its check-in
        return max(0.0, (hold or sim.interval) - elapsed)

    async def execute(self, instruction_id: str) -> None:
        """'Run' the instruction for a moment, then deliver its result (retrying like the spool)."""
        sim, rec = self.sim, self.sim.records
        await asyncio.sleep(sim.rng.uniform(0.05, 0.3))
        result = make_result(
            instruction_id, "completed", exit_code=0, stdout=f"ok from {self.namespaces['network']['hostname']}\n"
        )
        for _attempt in range(5):
            started, wall = time.perf_counter(), time.time()
            try:
                status, answer, _ = await self.post(AGENT + "results/", result, 60)
            except (aiohttp.ClientError, TimeoutError) as exc:
                rec.results.append((wall, time.perf_counter() - started, "error"))
                rec.error("result transport", repr(exc))
                await asyncio.sleep(1)
                continue
            rec.results.append((wall, time.perf_counter() - started, "ok" if status in (200, 201) else str(status)))
            if status not in (200, 201):
                rec.error(f"result HTTP {status}", str(answer))
            break
        self.running.discard(instruction_id)

    async def life(self, stop: asyncio.Event) -> None:
        """Heartbeat back to back (or every interval without holds), from a random offset."""
        sim = self.sim
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), sim.rng.uniform(0, sim.interval))
            return
        while not stop.is_set():
            hold = sim.interval * sim.rng.uniform(0.95, 1.05) if sim.hold else 0.0
            delay = await self.heartbeat(hold)
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)


class Simulator:
    """One worker process's share of the fleet."""

    def __init__(self, urls: list[str], seed: int, ca: str | None) -> None:
        self.urls = urls
        self.rng = random.Random(seed)
        self.agents: list[SimAgent] = []
        self.records = Records()
        self.tasks: set[asyncio.Task] = set()
        self.interval = 30.0
        self.facts_change = 0.0
        self.hold = True
        # One pool for thousands of agents, as a proxy keeps to its upstream: idle connections
        # are dropped after 60 s (nginx's upstream default), before the agent tier's 75 s
        # (the README's --timeout-keep-alive), so no request races the server closing one.
        # Through the proxy, over https trusting the run's CA alone, as an agent pinned to it.
        tls = ssl.create_default_context(cafile=ca) if ca else None
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ssl=tls if tls else True)
        self.session = aiohttp.ClientSession(connector=connector, skip_auto_headers=["Accept-Encoding"])

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def enroll(self, token: str, names: list[str], concurrency: int) -> dict:
        """Enroll ``names`` through the real endpoint; returns identities and latencies."""
        latencies: list[float] = []
        queue = list(enumerate(names))

        async def one(index: int, hostname: str) -> None:
            url = self.urls[index % len(self.urls)]
            namespaces = make_namespaces(hostname, self.rng)
            facts = {key: value for part in namespaces.values() for key, value in part.items()}
            for _attempt in range(5):
                started = time.perf_counter()
                try:
                    async with self.session.post(
                        url + AGENT + "enroll/",
                        json={"token": token, "facts": facts},
                        timeout=aiohttp.ClientTimeout(60),
                    ) as answer:
                        body = await _json(answer)
                        status = answer.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.records.error("enroll transport", repr(exc))
                    continue
                latencies.append(time.perf_counter() - started)
                if status == 201:
                    self.agents.append(SimAgent(self, url, body, namespaces))
                    return
                self.records.error(f"enroll HTTP {status}", str(body))
                return

        async def runner() -> None:
            while queue:
                index, hostname = queue.pop()
                await one(index, hostname)

        await asyncio.gather(*(runner() for _ in range(concurrency)))
        return {
            "agents": [(a.agent_id, a.asset_id) for a in self.agents],
            "latencies": latencies,
            "errors": dict(self.records.errors),
        }

    def fleet_start(self, interval: float, facts_change: float, hold: bool) -> asyncio.Event:
        self.interval, self.facts_change, self.hold = interval, facts_change, hold
        self.records = Records()
        stop = asyncio.Event()
        for agent in self.agents:
            self.spawn(agent.life(stop))
        return stop

    async def fleet_stop(self, stop: asyncio.Event) -> Records:
        stop.set()
        await asyncio.sleep(0.5)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        return self.records

    async def saturate(self, path: str, concurrency: int, seconds: float) -> list[tuple[float, float, str]]:
        """Closed loop: ``concurrency`` callers, each agent in turn, as fast as the server answers."""
        samples: list[tuple[float, float, str]] = []
        body_of = {
            "heartbeat/": lambda a: {
                "agent_version": "0.1.0",
                "namespaces": {name: {"hash": digest} for name, digest in a.acked.items()},
                "running": [],
                "capacity": 4,
            },
            "bench/bare/": lambda a: {},
        }[path]
        end = time.perf_counter() + seconds
        turn = iter(range(10**12))

        async def caller() -> None:
            while time.perf_counter() < end:
                agent = self.agents[next(turn) % len(self.agents)]
                started, wall = time.perf_counter(), time.time()
                try:
                    status, _, _ = await agent.post(AGENT + path, body_of(agent), 30)
                    outcome = "ok" if status == 200 else str(status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    outcome = "error"
                    self.records.error(f"saturate {path} transport", repr(exc))
                samples.append((wall, time.perf_counter() - started, outcome))

        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return samples


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(conn: Connection, urls: list[str], seed: int, ca: str | None) -> None:
    """A simulator process: obey the coordinator's commands until ``exit``; ``ca``: the CA file
    the agents trust (https through the proxy)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def main() -> None:
        sim = Simulator(urls, seed, ca)
        loop = asyncio.get_running_loop()
        stop: asyncio.Event | None = None
        try:
            while True:
                command, args = await loop.run_in_executor(None, conn.recv)
                if command == "enroll":
                    conn.send(await sim.enroll(**args))
                elif command == "fleet_start":
                    stop = sim.fleet_start(**args)
                    conn.send({"cpu": _cpu()})
                elif command == "fleet_stop" and stop is not None:
                    records = await sim.fleet_stop(stop)
                    conn.send({"records": records.__dict__, "cpu": _cpu()})
                elif command == "saturate":
                    samples = await sim.saturate(**args)
                    conn.send({"samples": samples, "errors": dict(sim.records.errors), "cpu": _cpu()})
                elif command == "exit":
                    return
        finally:
            await sim.session.close()

    asyncio.run(main())
