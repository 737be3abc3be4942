"""One benchmark run: start the server, enroll a fleet, drive it, measure, report.

Phases, in order:

1. **enroll**: the online fleet enrolls through the real endpoint; offline assets, needed only
   to make the fan-out as wide as asked, are seeded straight into the database.
2. **steady**: every agent heartbeats back to back from a random start offset, each heartbeat
   held by the server for up to one interval (±5 % jitter) while it has nothing for the agent.
   After one interval of warm-up the window is measured; during it one single-asset job a
   second is created for a random online agent (dispatch latency).
3. **fan-out**: one script job across ``fanout`` assets through the batch endpoint, while the
   fleet runs; the online agents in the first wave lease, run and report.
4. **intake**: one job on each of ``intake`` online agents, in a batch released at once, while
   the fleet runs: results stored per second by the server's clock, apart from any wave plan.
5. **saturation**: the fleet stops; closed-loop callers then hammer the heartbeat and the bare
   endpoint in turn, each as fast as the server answers.

With ``proxy="nginx"`` the simulated agents make every call through Debian's nginx running the
shipped site, over https (bench/cluster.py); the REST API's calls and the workers' own figures go
to the workers straight, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import random
import resource
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import fleet
from bench.cluster import Cluster, cpu_seconds


@dataclass
class Options:
    fleet: int = 3000
    interval: int = 30
    duration: int = 45
    workers: int = 2
    api_workers: int = 1  # daphne, for the console and the REST API (the README's layout)
    server: str = "uvicorn"  # the agent tier of the README's production section
    proxy: str = ""  # "nginx": the agents call through the shipped nginx site, over https
    sim: int = 2
    fanout: int = 10_000
    intake: int = 1000  # agents given one job each at once in the intake phase (0: none)
    wave: int = 500  # RMM_WAVE_SIZE: the first wave of the fan-out, all online agents, runs at once
    saturate: int = 10
    concurrency: int = 64
    facts_change: float = 0.01
    hold: bool = True
    out: str = ""


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def ms(values: list[float]) -> dict:
    return {f"p{q}_ms": round(percentile(values, q) * 1000, 1) for q in (50, 95, 99)} | {
        "max_ms": round(max(values) * 1000, 1) if values else None
    }


class Api:
    """The REST API as the PSA, technicians and approvers call it."""

    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, token: str, data=None, timeout: float = 120) -> dict:
        request = urllib.request.Request(
            self.url + path,
            data=None if data is None else json.dumps(data).encode(),
            method=method,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"{method} {path}: HTTP {error.code} {error.read()[:500]!r}") from error


SEED = """
import json
from django.core.management import call_command
from io import StringIO
from rmm.inventory import services as inventory
site = inventory.get_or_create_site("bench", actor="cli:bench")
# the bench PSA requests jobs on authority it writes itself: its site allows that
inventory.set_site_policy("cli:bench", site, allow_self_authorized_jobs=True)
tokens = {}
for user, role in (("bench-psa", "psa"), ("bench-tech", "technician"), ("bench-approver", "approver")):
    out = StringIO()
    call_command("rmm_token", user, role=role, site=["bench"], stdout=out)
    tokens[role] = out.getvalue().strip()
_, enrollment = inventory.create_enrollment_token(site, actor="cli:bench", max_uses=%(uses)d)
print(json.dumps({"tokens": tokens, "enrollment": enrollment, "site": str(site.pk)}))
"""

OFFLINE = """
import hashlib, json, secrets, uuid
from django.utils import timezone
from rmm.inventory.models import Agent, Asset, AssetFacts, Site
site = Site.objects.get(name="bench")
now = timezone.now()
assets = [Asset(site=site, hostname=f"offline-{n:05d}", os="Linux", architecture="x86_64") for n in range(%(count)d)]
Asset.objects.bulk_create(assets, batch_size=2000)
Agent.objects.bulk_create(
    [Agent(asset=a, secret_hash=hashlib.sha256(secrets.token_bytes(16)).hexdigest()) for a in assets], batch_size=2000
)
AssetFacts.objects.bulk_create(
    [AssetFacts(asset=a, facts={"hostname": a.hostname}, facts_hash="0" * 64, reported_at=now) for a in assets],
    batch_size=2000,
)
print(json.dumps([str(a.pk) for a in assets]))
"""


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (every core, every process)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run_and_report(cluster: Cluster, drive, options, report: dict) -> None:
    """Start the cluster, run ``drive(cluster, options, report)`` (a coroutine), stop the cluster
    whatever happens, then print the report as JSON and write it to ``options.out`` if given."""
    cluster.start()
    try:
        asyncio.run(drive(cluster, options, report))
    finally:
        report["load_average_after"] = os.getloadavg()
        cluster.stop()
    text = json.dumps(report, indent=2)
    print(text)
    if options.out:
        Path(options.out).write_text(text + "\n")


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    memory = next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in line)
    postgres = subprocess.run(["psql", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": multiprocessing.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(int(memory) / 1024 / 1024, 1),
        "python": platform.python_version(),
        "postgres": postgres,
    }


class Bench:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.report: dict = {"options": options.__dict__, "machine": machine()}
        self.pipes: list = []
        self.procs: list[multiprocessing.Process] = []
        self.wave = max(1, min(options.wave, options.fleet, options.fanout))

    # -- simulator processes ------------------------------------------------------------------

    def _spawn(self, urls: list[str], ca: str | None) -> None:
        context = multiprocessing.get_context("spawn")
        for n in range(self.o.sim):
            ours, theirs = context.Pipe()
            proc = context.Process(target=fleet.worker, args=(theirs, urls, 1000 + n, ca), daemon=True)
            proc.start()
            self.pipes.append(ours)
            self.procs.append(proc)

    def _sim_cpu(self) -> float:
        return sum(cpu_seconds(proc.pid) for proc in self.procs)

    def _all(self, command: str, args_of) -> list:
        for n, pipe in enumerate(self.pipes):
            pipe.send((command, args_of(n)))
        return [pipe.recv() for pipe in self.pipes]

    # -- phases --------------------------------------------------------------------------------

    def run(self) -> dict:
        o = self.o
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # servers and simulators inherit it
        cluster = Cluster(
            workers=o.workers,
            api_workers=o.api_workers,
            server=o.server,
            proxy=o.proxy,
            agents=o.fleet,
            interval=o.interval,
            extra_env={"RMM_WAVE_SIZE": str(self.wave), "RMM_ENROLLMENT_TOKEN_USES": str(o.fleet)},
        )
        print(
            f"starting {o.workers} {o.server} workers, {o.api_workers} daphne API workers, qcluster,"
            f"{' nginx in front of the agent tier,' if o.proxy else ''} database {cluster.dbname} ...",
            flush=True,
        )
        started = time.monotonic()
        cluster.start()
        try:
            self.report["server_start_seconds"] = round(time.monotonic() - started, 1)
            self._spawn(cluster.agent_urls, cluster.ca)
            self._run(cluster)
            if o.proxy:
                self.report["proxy"] = cluster.proxy_answers()
        finally:
            for pipe in self.pipes:
                with contextlib.suppress(OSError):
                    pipe.send(("exit", {}))
            for proc in self.procs:
                proc.join(10)
            self.report["server_peak_memory_mib"] = {k: round(v, 1) for k, v in cluster.memory().items()}
            cluster.stop()
        return self.report

    def _run(self, cluster: Cluster) -> None:
        o = self.o
        seed = cluster.shell(SEED % {"uses": o.fleet})
        tokens = seed["tokens"]
        api = Api(cluster.api_urls[0])
        script = api.call(
            "POST", "/api/v1/scripts/", tokens["technician"], {"name": "bench", "language": "sh", "content": "true\n"}
        )
        api.call("POST", f"/api/v1/scripts/{script['id']}/approve/", tokens["approver"])
        case_id, task_id = str(_uuid()), str(_uuid())
        api.call(
            "PUT",
            f"/api/v1/psa/cases/{case_id}/",
            tokens["psa"],
            {"title": "bench", "status": "approved", "site": "bench"},
        )
        api.call(
            "PUT",
            f"/api/v1/psa/tasks/{task_id}/",
            tokens["psa"],
            {"case": case_id, "title": "bench", "status": "approved"},
        )

        # 1. enroll
        print(f"enrolling {o.fleet} agents through the protocol ...", flush=True)
        names = [f"sim-{n:05d}" for n in range(o.fleet)]
        began = time.monotonic()
        enrolled = self._all(
            "enroll", lambda n: {"token": seed["enrollment"], "names": names[n :: o.sim], "concurrency": 32}
        )
        took = time.monotonic() - began
        online = [asset for part in enrolled for _, asset in part["agents"]]
        latencies = [x for part in enrolled for x in part["latencies"]]
        self.report["enroll"] = {
            "agents": len(online),
            "seconds": round(took, 1),
            "per_second": round(len(online) / took, 1),
            **ms(latencies),
            "errors": _merge(part["errors"] for part in enrolled),
        }
        offline_count = max(0, o.fanout - len(online))
        offline = json.loads(cluster.manage("shell", "--verbosity", "0", "-c", OFFLINE % {"count": offline_count}))
        offline = offline if offline_count else []

        # 2. steady state, with dispatch probes
        print(
            f"fleet of {len(online)} at {o.interval} s: warm-up {o.interval} s, then {o.duration} s measured ...",
            flush=True,
        )
        cpu0 = sum(
            reply["cpu"]
            for reply in self._all(
                "fleet_start",
                lambda n: {"interval": o.interval, "facts_change": o.facts_change, "hold": o.hold},
            )
        )
        time.sleep(o.interval)
        cluster.stats(reset=True)
        window = (time.time(), 0.0)
        server_cpu0 = cluster.cpu() | {"machine": machine_busy_seconds(), "simulator": self._sim_cpu()}
        database0 = cluster.database_seconds()
        probes = self._probe(api, tokens["psa"], script["id"], task_id, online, o.duration)
        window = (window[0], time.time())
        server_cpu1 = cluster.cpu() | {"machine": machine_busy_seconds(), "simulator": self._sim_cpu()}
        database = cluster.database_seconds() - database0
        steady_stats = cluster.stats()

        # 3. fan-out, with the fleet running
        fan_assets = online[: o.fanout] + offline
        print(f"fan-out: one script job across {len(fan_assets)} assets ...", flush=True)
        began = time.monotonic()
        batch = api.call(
            "POST",
            "/api/v1/script-jobs/batch/",
            tokens["psa"],
            {"script": script["id"], "assets": fan_assets, "psa_task_id": task_id},
            timeout=600,
        )
        fan_seconds = time.monotonic() - began
        fan_start = time.time()
        expected = min(len(online), o.fanout, self.wave)
        signed_after = self._await_results(cluster, batch, expected, began, timeout=max(120, 2 * o.interval))
        fan_end = time.time()
        storm_stats = cluster.stats(api=True)  # queries per call: the API's endpoints too

        # 4. intake: one job for each of `intake` online agents, released at once (a plan whose
        # canary is the whole batch), so that the results come as fast as the agents and the server
        # take them. Not the whole fleet: results beyond what the server stores in an agent's
        # 60 s result timeout end in transport errors and retries, which measure the pile-up.
        takers = online[: o.intake]
        if takers:
            print(f"intake: one job on each of {len(takers)} online agents, released at once ...", flush=True)
            began = time.monotonic()
            intake = api.call(
                "POST",
                "/api/v1/script-jobs/batch/",
                tokens["psa"],
                {
                    "script": script["id"],
                    "assets": takers,
                    "psa_task_id": task_id,
                    "plan": {"canary": len(takers), "failure_threshold_percent": 100},
                },
                timeout=600,
            )
            self.report["intake"] = self._await_intake(cluster, intake, began, timeout=max(180, 4 * o.interval))
        replies = self._all("fleet_stop", lambda n: {})
        sim_cpu = sum(reply["cpu"] for reply in replies) - cpu0
        records = [reply["records"] for reply in replies]

        self._steady_report(records, window, server_cpu0, server_cpu1, steady_stats, probes)
        self.report["steady"]["database_ms_per_heartbeat"] = round(
            1000 * database / max(1, self.report["steady"]["heartbeats"]), 3
        )
        fan_jobs = {job["id"] for job in batch["jobs"]}
        self._fanout_report(records, fan_jobs, fan_seconds, fan_start, fan_end, len(fan_assets), expected)
        self.report["fanout"]["all_signed_after_s"] = round(signed_after, 2) if signed_after is not None else None
        self.report["queries_per_call"] = _queries(storm_stats)
        self.report["gc_pauses_steady"] = _gc_pauses(steady_stats)
        self.report["simulator_cpu_seconds_fleet_phase"] = round(sim_cpu, 1)
        self.report["errors"] = _merge(r["errors"] for r in records)
        self.report["error_samples"] = {k: v for r in records for k, v in r["samples"].items()}

        # 5. saturation: heartbeat, then the bare endpoint, same stack, same callers
        self.report["saturation"] = {}
        for label, path in (("heartbeat", "heartbeat/"), ("bare", "bench/bare/")):
            print(f"saturation: {label} for {o.saturate} s ...", flush=True)
            cpu_before = cluster.cpu()
            replies = self._all(
                "saturate",
                lambda n, path=path: {
                    "path": path,
                    "concurrency": max(1, o.concurrency // o.sim),
                    "seconds": o.saturate,
                },
            )
            cpu_after = cluster.cpu()
            samples = [s for reply in replies for s in reply["samples"]]
            ok = [s for s in samples if s[2] == "ok"]
            span = (max(s[0] + s[1] for s in samples) - min(s[0] for s in samples)) if samples else 1
            workers_cpu = sum(cpu_after[k] - cpu_before[k] for k in cpu_after if k.startswith("worker"))
            outcomes: dict[str, int] = {}
            for sample in samples:
                outcomes[sample[2]] = outcomes.get(sample[2], 0) + 1
            self.report["saturation"][label] = {
                "requests_per_second": round(len(ok) / span, 1),
                "errors": len(samples) - len(ok),
                "outcomes": outcomes,
                **ms([s[1] for s in ok]),
                "server_cpu_ms_per_request": round(1000 * workers_cpu / max(1, len(ok)), 2),
                "postgres_cpu_ms_per_request": round(
                    1000 * (cpu_after["postgres"] - cpu_before["postgres"]) / max(1, len(ok)), 2
                ),
                **(
                    {"nginx_cpu_ms_per_request": round(1000 * (cpu_after["nginx"] - cpu_before["nginx"]) / len(ok), 2)}
                    if "nginx" in cpu_after and ok
                    else {}
                ),
            }
        sat = self.report["saturation"]
        sat["heartbeat_share_of_bare"] = round(
            sat["heartbeat"]["requests_per_second"] / max(0.1, sat["bare"]["requests_per_second"]), 3
        )

    def _probe(self, api: Api, token: str, script_id: str, task_id: str, online: list[str], seconds: float) -> dict:
        """One single-asset job a second on a random online agent; when each was asked for."""
        rng = random.Random(7)
        asked: dict[str, float] = {}
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            tick = time.monotonic()
            at = time.time()
            job = api.call(
                "POST",
                "/api/v1/script-jobs/",
                token,
                {"script": script_id, "asset": rng.choice(online), "psa_task_id": task_id},
            )
            asked[job["id"]] = at
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
        return asked

    def _await_results(
        self, cluster: Cluster, batch: dict, expected: int, began: float, timeout: float
    ) -> float | None:
        """Until the first wave's results are all in and every instruction of the batch is signed
        (the later waves by the task cluster), or the timeout; returns when the last was signed,
        in seconds from the batch request."""
        import psycopg

        ids = [job["id"] for job in batch["jobs"]]
        deadline, signed_after = time.monotonic() + timeout, None
        with psycopg.connect(cluster.env["DATABASE_URL"], autocommit=True) as conn:
            while time.monotonic() < deadline:
                done = conn.execute(
                    "SELECT count(*) FROM scripting_scriptjob WHERE id = ANY(%s::uuid[]) AND status = 'succeeded'",
                    [ids],
                ).fetchone()[0]
                if signed_after is None:
                    signed = conn.execute(
                        "SELECT count(*) FROM engine_instruction WHERE job_id = ANY(%s::uuid[])", [ids]
                    ).fetchone()[0]
                    signed_after = time.monotonic() - began if signed >= len(ids) else None
                if done >= expected and signed_after is not None:
                    break
                time.sleep(0.5)
        return signed_after

    def _await_intake(self, cluster: Cluster, batch: dict, began: float, timeout: float) -> dict:
        """Until every job of the intake batch ended (or the timeout); the figures from the
        server's own clock: when each result was stored (its instruction's ``finished_at``)."""
        import psycopg

        ids = [job["id"] for job in batch["jobs"]]
        queued = time.monotonic() - began
        deadline = time.monotonic() + timeout
        query = (
            "SELECT count(*) FILTER (WHERE result_hash <> ''), count(*) FILTER (WHERE leased_at IS NOT NULL),"
            " min(finished_at) FILTER (WHERE result_hash <> ''), max(finished_at) FILTER (WHERE result_hash <> ''),"
            " min(issued_at) FROM engine_instruction WHERE job_id = ANY(%s::uuid[])"
        )
        with psycopg.connect(cluster.env["DATABASE_URL"], autocommit=True) as conn:
            while True:
                results, leased, first, last, issued = conn.execute(query, [ids]).fetchone()
                if results >= len(ids) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        span = (last - first).total_seconds() if results > 1 else None
        return {
            "jobs": len(ids),
            "queue_seconds": round(queued, 2),
            "leased": leased,
            "results": results,
            "first_result_after_issue_s": round((first - issued).total_seconds(), 2) if first else None,
            "last_result_after_issue_s": round((last - issued).total_seconds(), 2) if last else None,
            "results_per_second": round((results - 1) / span, 1) if span else None,
        }

    # -- figures --------------------------------------------------------------------------------

    def _steady_report(self, records, window, cpu0, cpu1, stats, probes) -> None:
        start, end = window
        span = end - start
        beats = [b for r in records for b in r["heartbeats"] if start <= b[0] < end]
        ok = [b for b in beats if b[2] in ("ok", "woken")]
        timed = [b[1] for b in ok if b[2] == "ok"]  # answered when their hold was up: the server's delay
        leased_at: dict[str, float] = {}
        for r in records:
            for job_id, at in r["leases"]:
                leased_at.setdefault(job_id, at)
        dispatch = [leased_at[job] - at for job, at in probes.items() if job in leased_at]
        workers_cpu = sum(cpu1[k] - cpu0[k] for k in cpu1 if k.startswith("worker"))
        self.report["steady"] = {
            "window_seconds": round(span, 1),
            "agents": self.o.fleet,
            "interval_seconds": self.o.interval,
            "heartbeats": len(beats),
            "heartbeats_per_second": round(len(ok) / span, 1),
            "heartbeat_errors": len(beats) - len(ok),
            **{f"heartbeat_{k}": v for k, v in ms(timed).items()},
            "heartbeats_woken": sum(1 for b in ok if b[2] == "woken"),
            "server_cpu_seconds_per_1000_heartbeats": round(1000 * workers_cpu / max(1, len(ok)), 2),
            **(
                {"nginx_cpu_seconds_per_1000_heartbeats": round(1000 * (cpu1["nginx"] - cpu0["nginx"]) / len(ok), 2)}
                if "nginx" in cpu1 and ok
                else {}
            ),
            "cpu_seconds": {k: round(cpu1[k] - cpu0[k], 1) for k in cpu1},
            "cpu_share_of_one_core": {k: round((cpu1[k] - cpu0[k]) / span, 2) for k in cpu1},
            # Whatever else ran on the machine meanwhile (it is shared): busy CPU not ours.
            "other_processes_share_of_one_core": round(
                ((cpu1["machine"] - cpu0["machine"]) - sum(cpu1[k] - cpu0[k] for k in cpu1 if k != "machine")) / span, 2
            ),
            "load_average": Path("/proc/loadavg").read_text().split()[:3],
            "dispatch_probes": len(probes),
            "dispatch_leased": len(dispatch),
            **{f"dispatch_{k}": v for k, v in ms(dispatch).items()},
            "dispatch_mean_ms": round(statistics.fmean(dispatch) * 1000, 1) if dispatch else None,
        }

    def _fanout_report(self, records, fan_jobs, queue_seconds, start, end, assets, expected) -> None:
        leases = sorted(at for r in records for job, at in r["leases"] if job in fan_jobs and at <= end)
        results = sorted(
            (t + d)
            for r in records
            for t, d, outcome in r["results"]
            if outcome == "ok" and start - 1 <= t and t + d <= end
        )
        span = (results[-1] - results[0]) if len(results) > 1 else float("nan")
        self.report["fanout"] = {
            "assets": assets,
            "queue_seconds": round(queue_seconds, 2),
            "first_wave": expected,
            "leased": len(leases),
            "results_accepted": len(results),
            "first_lease_after_queued_s": round(leases[0] - start, 2) if leases else None,
            "all_leased_after_queued_s": round(leases[-1] - start, 2) if leases else None,
            "results_per_second": round(len(results) / span, 1) if len(results) > 1 else None,
        }


def _uuid():
    import uuid

    return uuid.uuid4()


def _merge(dicts) -> dict:
    merged: dict[str, int] = {}
    for d in dicts:
        for key, value in d.items():
            merged[key] = merged.get(key, 0) + value
    return merged


def _gc_pauses(snapshot: list[dict]) -> dict:
    """Garbage-collector pauses of the workers in the steady window, per generation."""
    merged: dict[str, dict] = {}
    for worker in snapshot:
        for gen, row in worker.get("gc", {}).items():
            total = merged.setdefault(gen, {"collections": 0, "seconds": 0.0, "longest_ms": 0.0})
            total["collections"] += row["collections"]
            total["seconds"] = round(total["seconds"] + row["seconds"], 4)
            total["longest_ms"] = max(total["longest_ms"], row["longest_ms"])
    return merged


def _queries(snapshot: list[dict]) -> dict:
    """Queries per call of each endpoint, over every worker, since the counts were reset."""
    totals: dict[str, list[int]] = {}
    for worker in snapshot:
        for label, row in worker["endpoints"].items():
            total = totals.setdefault(label, [0, 0])
            total[0] += row["requests"]
            total[1] += row["queries"]
    return {label: {"calls": n, "queries_per_call": round(q / n, 2)} for label, (n, q) in sorted(totals.items()) if n}
