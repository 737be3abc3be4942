"""Many remote terminal sessions relaying at once (docs/performance.md, Remote sessions).

The README's production layout (bench/cluster.py: PostgreSQL, the Redis channel layer, an agent
tier of uvicorn for the agent protocol, ``--workers`` daphne processes for the console, the REST
API and the websockets, as deploy/nginx/rmm.conf routes ``/ws/``, and the task cluster) on a fresh
database. ``--sessions`` simulated agents enroll, saying they can carry a ``remote_session``; the
PSA grants a task on the site; a technician opens one terminal session per asset through the REST
API (the site's default policy: no approver), each agent leases its signed step (its signature
checked as ``rmm_agent`` does) and opens the relay websocket the step names with its credential
(``Authorization: Agent …``), and the technician's browser, signed in through the login form,
takes each session page's single-use join token and joins (``/ws/sessions/<id>/?token=…``).
With two or more daphne processes a session's agent and browser are on different ones, so the
relay crosses processes through Redis.

The agent's side is a player of the relay's protocol, not ``rmm_agent`` with a PTY: it echoes
every binary frame it receives back verbatim, where a shell's PTY would echo keystrokes (with
its line discipline). Each browser then types ``--megabytes`` MB in ``--frame-bytes`` frames,
at most ``--window`` frames awaiting their echo, so that every byte passes the relay both ways
and is recorded both ways (``i`` and ``o``). Each frame carries the bench's clock
(``perf_counter_ns``; both ends are in this process): the agent's side measures the way in, the
browser the whole way round. Then the technician ends every session through the API, the task
cluster seals each recording, and the bench downloads each sealed recording from the session
page, checks its sha256 against the session's ``recording_sha256`` and that every typed and
echoed byte is in it.

Printed: echoed bytes a second, the relay's latency (one way and round trip) p50/p95/p99, the
server processes' resident memory (together and each) before, at their peak during the relay and
after the sealing, their CPU seconds, frames lost or sessions stalled, and recordings sealed.

    make bench-sessions                                   # 100 sessions × 1 MB, one daphne
    make bench-sessions BENCH_ARGS="--sessions 10 --megabytes 1 --workers 2"
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import html
import json
import os
import re
import resource
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

import aiohttp
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench.cluster import Cluster
from bench.download_bench import Sampler
from bench.run import SEED, Api, machine, ms, run_and_report
from rmm_agent import keyring
from rmm_agent.protocol import CAPABILITIES, SESSION_ACTION, InstructionRefused, verify_instruction
from tests.e2e.flows import Session as Browser

AGENT = "/api/v1/agent/"
SESSIONS = "/api/v1/remote-sessions/"
PASSWORD = "a long bench password 1"
RELAY = re.compile(r'data-relay="([^"]+)"')
STALL_SECONDS = 60.0  # a session whose echo makes no progress this long is given up (frames lost)
STAMP = 30  # "<perf_counter_ns, 20 digits> <sequence, 8 digits> " at the start of every frame

# The technician signs in to the console with a password (bench.run.SEED made its API token).
PASSWORD_SET = """
import json
from django.contrib.auth.models import User
user = User.objects.get(username="bench-tech")
user.set_password(%(password)r)
user.save()
print(json.dumps({"ok": True}))
"""


def frame(sequence: int, size: int) -> bytes:
    """A typed frame of ``size`` bytes (at least STAMP + 1): the bench's clock and its sequence,
    then printable text and a newline, as a paste into the terminal would be."""
    head = b"%020d %08d " % (time.perf_counter_ns(), sequence)
    return head + b"x" * (size - STAMP - 1) + b"\n"


def stamped(data: bytes) -> int:
    """The perf_counter_ns a frame was typed at."""
    return int(data[:20])


class RelayAgent:
    """One enrolled asset's agent: heartbeats as ``rmm_agent`` does, leases its session step,
    verifies it, and plays the relay's agent side (echo)."""

    def __init__(self, url: str, ws_url: str, identity: dict) -> None:
        self.url = url
        self.ws_url = ws_url
        self.agent_id = identity["agent_id"]
        self.asset_id = identity["asset_id"]
        self.auth = {"Authorization": f"Agent {identity['agent_id']}:{identity['secret']}"}
        pinned = base64.b64decode(identity["server_public_key"])
        self.keys = {keyring.key_id(pinned): pinned}
        self.inbound: list[float] = []  # browser → agent, seconds

    async def heartbeat(self, http: aiohttp.ClientSession, wait: float) -> list:
        body = {"agent_version": "0.1.0", "protocol": 2, "capabilities": list(CAPABILITIES), "running": []}
        body |= {"capacity": 1, "wait": wait} if wait else {"capacity": 1}
        timeout = aiohttp.ClientTimeout(total=60 + wait)
        async with http.post(self.url + AGENT + "heartbeat/", json=body, headers=self.auth, timeout=timeout) as r:
            if r.status != 200:
                raise RuntimeError(f"heartbeat: HTTP {r.status} {(await r.text())[:300]}")
            return (await r.json()).get("instructions") or []

    async def lease_session(self, http: aiohttp.ClientSession) -> dict:
        """Heartbeat (held until woken) until the session's signed step comes; its order."""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for envelope in await self.heartbeat(http, 30):
                try:
                    payload = verify_instruction(envelope, self.keys, self.agent_id, datetime.now(UTC))
                except InstructionRefused as refusal:
                    raise RuntimeError(f"step refused: {refusal.reason}") from refusal
                if payload["interpreter"] == SESSION_ACTION:
                    return json.loads(payload["content"])
        raise RuntimeError("no session step leased within 300 s")

    async def open_relay(self, order: dict):
        """The websocket the step names, with the agent's credential, as rmm_agent.session opens it."""
        return await connect(
            self.ws_url + order["relay"], additional_headers=self.auth, open_timeout=60, compression=None
        )

    async def echo(self, socket) -> None:
        """Every keystroke frame straight back, as output, until the server closes the relay."""
        try:
            async for data in socket:
                if isinstance(data, bytes):
                    self.inbound.append((time.perf_counter_ns() - stamped(data)) / 1e9)
                    await socket.send(data)
        except ConnectionClosed:
            pass


async def enroll(http: aiohttp.ClientSession, url: str, ws_urls: list[str], token: str, count: int) -> list:
    agents: list[RelayAgent] = []
    names = [f"sess-{n:05d}" for n in range(count)]

    async def runner() -> None:
        while names:
            name = names.pop()
            facts = {"hostname": name, "os": "Linux", "os_version": "Debian GNU/Linux 13", "architecture": "x86_64"}
            body = {"token": token, "facts": facts, "protocol": 2, "capabilities": list(CAPABILITIES)}
            async with http.post(url + AGENT + "enroll/", json=body, timeout=aiohttp.ClientTimeout(60)) as r:
                if r.status != 201:
                    raise RuntimeError(f"enroll: HTTP {r.status} {(await r.text())[:300]}")
                identity = await r.json()
            agent = RelayAgent(url, ws_urls[len(agents) % len(ws_urls)], identity)
            agents.append(agent)
            await agent.heartbeat(http, 0)  # online, with its capabilities

    await asyncio.gather(*(runner() for _ in range(16)))
    return agents


class Relay:
    """One session's two ends and what its browser saw."""

    def __init__(self, agent: RelayAgent, session_id: str, browser_ws_url: str) -> None:
        self.agent = agent
        self.session_id = session_id
        self.browser_ws_url = browser_ws_url
        self.round_trips: list[float] = []
        self.sent = self.echoed = 0
        self.stalled = False
        self.agent_socket = self.browser_socket = self.echoing = None
        self.failed = ""  # why its relay did not open
        self.cut = ""  # why its relay was cut while typing
        self.relay_seconds = 0.0  # the agent's websocket: from connecting to accepted

    async def open(self, http: aiohttp.ClientSession, browser: Browser, origin: str, gate: asyncio.Semaphore) -> None:
        """The agent leases its step and opens the relay (at most ``gate``'s number at once); the
        browser opens the session page and joins with its token. A relay that does not open is
        noted (``failed``), as the real agent reports it, and the session is left out."""
        order = await self.agent.lease_session(http)
        if order["session"] != self.session_id:
            raise RuntimeError(f"agent leased session {order['session']}, not {self.session_id}")
        async with gate:
            began = time.monotonic()
            try:
                self.agent_socket = await self.agent.open_relay(order)
            except Exception as exc:  # noqa: BLE001 - whatever stops it opening, counted by kind
                self.failed = f"agent relay: {type(exc).__name__}: {exc}"[:200]
                return
            self.relay_seconds = time.monotonic() - began
            await self._join(browser, origin)

    async def _join(self, browser: Browser, origin: str) -> None:
        self.echoing = asyncio.create_task(self.agent.echo(self.agent_socket))
        status, _, page = await asyncio.to_thread(browser.open, f"/console/sessions/{self.session_id}/")
        found = RELAY.search(page)
        if status != 200 or not found:
            raise RuntimeError(f"session page {self.session_id}: HTTP {status}, no relay to join")
        try:
            self.browser_socket = await connect(
                self.browser_ws_url + html.unescape(found.group(1)),
                additional_headers={"Cookie": browser.cookie_header, "Origin": origin},
                open_timeout=60,
                compression=None,
            )
        except Exception as exc:  # noqa: BLE001 - counted by kind
            self.failed = f"browser join: {type(exc).__name__}: {exc}"[:200]

    async def type(self, total: int, size: int, window: int) -> None:
        """Type ``total`` bytes in frames of ``size``, at most ``window`` awaiting their echo;
        return once every byte came back (or nothing came for STALL_SECONDS)."""
        credit = asyncio.Semaphore(window)
        done = asyncio.Event()
        last = [time.monotonic()]

        async def receive() -> None:
            try:
                async for data in self.browser_socket:
                    if not isinstance(data, bytes):
                        continue  # the "[session ended …]" line
                    self.round_trips.append((time.perf_counter_ns() - stamped(data)) / 1e9)
                    self.echoed += len(data)
                    last[0] = time.monotonic()
                    credit.release()
                    if self.echoed >= total:
                        break
            except ConnectionClosed as exc:
                self.cut = f"browser socket closed: {exc}"[:200]
            done.set()

        receiving = asyncio.create_task(receive())
        sequence = 0
        try:
            while self.sent < total and not self.cut:
                while True:
                    try:
                        await asyncio.wait_for(credit.acquire(), timeout=5)
                        break
                    except TimeoutError:
                        if self.cut:
                            return
                        if time.monotonic() - last[0] > STALL_SECONDS:
                            self.stalled = True
                            return
                data = frame(sequence, min(size, total - self.sent) if total - self.sent > STAMP else size)
                try:
                    await self.browser_socket.send(data)
                except ConnectionClosed as exc:
                    self.cut = f"browser socket closed: {exc}"[:200]
                    break
                self.sent += len(data)
                sequence += 1
            while not done.is_set():
                try:
                    await asyncio.wait_for(done.wait(), timeout=5)
                except TimeoutError:
                    if time.monotonic() - last[0] > STALL_SECONDS:
                        self.stalled = True
                        return
        finally:
            if not receiving.done():
                receiving.cancel()

    async def close(self) -> None:
        for socket in (self.browser_socket, self.agent_socket):
            if socket is not None:
                await socket.close()
        if self.echoing is not None:
            await asyncio.gather(self.echoing, return_exceptions=True)


def check_recording(browser: Browser, session: dict, relay: Relay) -> str:
    """The sealed recording, downloaded from the session page: '' when its sha256 is the
    session's and it holds every byte typed and echoed, else what is wrong."""
    request = urllib.request.Request(browser.server.url + f"/console/sessions/{relay.session_id}/recording.cast")
    request.add_header("Cookie", browser.cookie_header)
    with urllib.request.urlopen(request, timeout=120) as answer:
        data = answer.read()
    if hashlib.sha256(data).hexdigest() != session["recording_sha256"]:
        return "sha256 differs from the session's recording_sha256"
    typed = shown = 0
    for line in data.splitlines()[1:]:
        _, kind, text = json.loads(line)
        size = len(text.encode("utf-8", "surrogateescape"))
        typed += size if kind == "i" else 0
        shown += size if kind == "o" else 0
    if typed != relay.sent or shown != relay.echoed:
        return f"recorded {typed} bytes in and {shown} out of {relay.sent} typed and {relay.echoed} echoed"
    return ""


async def drive(cluster: Cluster, o: argparse.Namespace, report: dict) -> None:
    seed = cluster.shell(SEED % {"uses": o.sessions})
    cluster.shell(PASSWORD_SET % {"password": PASSWORD})
    tokens = seed["tokens"]
    api_url = cluster.api_urls[0]
    api = Api(api_url)
    case_id, task_id = str(uuid.uuid4()), str(uuid.uuid4())
    api.call(
        "PUT", f"/api/v1/psa/cases/{case_id}/", tokens["psa"], {"title": "bench", "status": "approved", "site": "bench"}
    )
    api.call(
        "PUT", f"/api/v1/psa/tasks/{task_id}/", tokens["psa"], {"case": case_id, "title": "bench", "status": "approved"}
    )
    ws_urls = [url.replace("http", "ws", 1) for url in cluster.api_urls]
    browser = Browser(SimpleNamespace(url=api_url)).login("bench-tech", PASSWORD)

    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector, skip_auto_headers=["Accept-Encoding"]) as http:
        print(f"enrolling {o.sessions} agents ...", flush=True)
        agents = await enroll(http, cluster.urls[0], ws_urls, seed["enrollment"], o.sessions)
        sampler = Sampler({name: proc.pid for name, proc in cluster.procs.items()})
        sampler.start()
        await asyncio.sleep(2)
        idle_at = time.monotonic()

        print(f"opening {o.sessions} sessions through the API ...", flush=True)
        began = time.monotonic()
        relays = []
        for n, agent in enumerate(agents):
            body = {"asset": agent.asset_id, "session_type": "terminal", "provider": "terminal", "psa_task_id": task_id}
            opened = await asyncio.to_thread(api.call, "POST", SESSIONS, tokens["technician"], body)
            # with several daphne processes, the browser joins on another one than its agent
            relays.append(Relay(agent, opened["id"], ws_urls[(n + 1) % len(ws_urls)]))
        opened_seconds = time.monotonic() - began
        gate = asyncio.Semaphore(o.open_at_once)
        await asyncio.gather(*(relay.open(http, browser, api_url, gate) for relay in relays))
        joined_seconds = time.monotonic() - began
        failed = [relay for relay in relays if relay.failed]
        live = [relay for relay in relays if not relay.failed]
        print(f"{len(live)} relays open in {joined_seconds:.1f} s, {len(failed)} failed; typing ...", flush=True)

        cpu0 = cluster.cpu()
        client0 = resource.getrusage(resource.RUSAGE_SELF)
        first = time.monotonic()
        total = o.megabytes * 1_000_000
        await asyncio.gather(*(relay.type(total, o.frame_bytes, o.window) for relay in live))
        last = time.monotonic()
        client1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu1 = cluster.cpu()

        print("ending the sessions through the API ...", flush=True)
        for relay in relays:
            try:
                await asyncio.to_thread(api.call, "POST", f"{SESSIONS}{relay.session_id}/end/", tokens["technician"])
            except RuntimeError as exc:  # the relay that never opened may have ended (409)
                relay.failed = relay.failed or str(exc)[:200]
        await asyncio.gather(*(relay.close() for relay in relays))

        print("waiting for the recordings to be sealed ...", flush=True)
        sealed_at = time.monotonic()
        shown: dict[str, dict] = {}
        deadline = sealed_at + o.seal_timeout
        while time.monotonic() < deadline and len(shown) < len(relays):
            for relay in relays:
                if relay.session_id not in shown:
                    session = await asyncio.to_thread(
                        api.call, "GET", f"{SESSIONS}{relay.session_id}/", tokens["technician"]
                    )
                    if session["recording_sha256"]:
                        shown[relay.session_id] = session
            if len(shown) < len(relays):
                await asyncio.sleep(2)
        sealed_seconds = time.monotonic() - sealed_at
        await asyncio.sleep(2)
        after_at = time.monotonic()
        sampler.stopped.set()
        sampler.join()

    problems = {}
    for relay in relays:
        if relay.session_id in shown:
            problem = await asyncio.to_thread(check_recording, browser, shown[relay.session_id], relay)
            if problem:
                problems[relay.session_id] = problem
    end_reasons: dict[str, int] = {}
    for session in shown.values():
        end_reasons[session["end_reason"]] = end_reasons.get(session["end_reason"], 0) + 1

    seconds = max(last - first, 1e-9)
    echoed = sum(relay.echoed for relay in relays)
    rss = {"before": sampler.at(idle_at), "peak_during": sampler.between(first, last), "after": sampler.at(after_at)}
    report.update(
        {
            "sessions": {
                "asked": o.sessions,
                "opened_through_the_api_seconds": round(opened_seconds, 1),
                "all_relays_joined_seconds": round(joined_seconds, 1),
                "opened_at_once": o.open_at_once,
                "agent_relay_open": ms([relay.relay_seconds for relay in live]),
                "relays_failed": len(failed),
                "failures": sorted({relay.failed for relay in failed})[:5],
            },
            "relay": {
                "bytes_typed": sum(relay.sent for relay in relays),
                "bytes_echoed": echoed,
                "seconds": round(seconds, 1),
                "echoed_mb_per_second": round(echoed / seconds / 1e6, 2),
                "relayed_mb_per_second_both_ways": round(2 * echoed / seconds / 1e6, 2),
                "frames_round_trip": len([t for relay in relays for t in relay.round_trips]),
                "round_trip": ms([t for relay in relays for t in relay.round_trips]),
                "one_way_browser_to_agent": ms([t for agent in agents for t in agent.inbound]),
                "sessions_stalled": sum(relay.stalled for relay in relays),
                "sessions_cut": sum(bool(relay.cut) for relay in relays),
                "cuts": sorted({relay.cut for relay in relays if relay.cut})[:5],
                "bytes_lost": sum(relay.sent - relay.echoed for relay in relays),
            },
            "server_rss_mib": {key: {"all": round(sum(value.values()), 1), **value} for key, value in rss.items()},
            "server_cpu_seconds_during": {k: round(cpu1[k] - cpu0.get(k, 0.0), 1) for k in cpu1},
            "client_cpu_seconds_during": round(
                client1.ru_utime + client1.ru_stime - client0.ru_utime - client0.ru_stime, 1
            ),
            "recordings": {
                "sealed": len(shown),
                "of": len(relays),
                "sealed_within_seconds": round(sealed_seconds, 1),
                "sha256_and_bytes_checked": len(shown) - len(problems),
                "problems": dict(list(problems.items())[:10]),
                "end_reasons": end_reasons,
            },
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--megabytes", type=int, default=1, help="typed and echoed per session (10^6 bytes)")
    parser.add_argument("--workers", type=int, default=1, help="daphne processes serving the websockets")
    parser.add_argument("--frame-bytes", type=int, default=4096, help="bytes in each typed frame")
    parser.add_argument("--window", type=int, default=8, help="frames each browser has awaiting their echo")
    parser.add_argument("--open-at-once", type=int, default=10, help="agents opening their relay at the same time")
    parser.add_argument("--seal-timeout", type=float, default=180, help="seconds to wait for every recording")
    parser.add_argument("--out", default="", help="also write the report here as JSON")
    o = parser.parse_args()
    if o.frame_bytes <= STAMP:
        parser.error(f"--frame-bytes must be more than {STAMP}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    env = {"RMM_ENROLLMENT_TOKEN_USES": str(o.sessions)}
    redis = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/11")  # its database is flushed
    cluster = Cluster(workers=1, api_workers=o.workers, interval=30, agents=o.sessions, redis_url=redis, extra_env=env)
    report: dict = {"options": vars(o), "machine": machine(), "load_average_before": os.getloadavg()}
    print(f"starting 1 uvicorn worker, {o.workers} daphne, qcluster, database {cluster.dbname} ...", flush=True)
    run_and_report(cluster, drive, o, report)


if __name__ == "__main__":
    main()
