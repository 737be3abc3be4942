"""The benchmark report as a plain-text table (the JSON holds the same figures and more)."""

from __future__ import annotations


def _row(label: str, value) -> str:
    return f"  {label:<52} {value}"


def table(r: dict) -> str:
    m, o, s, f, sat = r["machine"], r["options"], r["steady"], r["fanout"], r["saturation"]
    lines = [
        f"RMM fleet benchmark — {m['date']}",
        f"machine: {m['cpus']} × {m['cpu_model']}, {m['memory_gib']} GiB, Python {m['python']}, {m['postgres']}",
        f"server: {o['workers']} {o['server']} workers, {o.get('api_workers', 0)} daphne API workers + qcluster,"
        f" PostgreSQL, Redis; simulator: {o['sim']} processes"
        + ("; agents through nginx (deploy/nginx/rmm.conf, https)" if o.get("proxy") else "; agents to the workers"),
        "",
        "enrollment",
        _row(
            "agents enrolled (real protocol)",
            f"{r['enroll']['agents']} in {r['enroll']['seconds']} s "
            f"({r['enroll']['per_second']}/s, p99 {r['enroll']['p99_ms']} ms)",
        ),
        "",
        f"steady state: {s['agents']} agents, {s['interval_seconds']} s interval, {s['window_seconds']} s measured",
        _row("heartbeats per second", s["heartbeats_per_second"]),
        _row(
            "heartbeat latency beyond its hold p50 / p95 / p99 / max (ms)",
            f"{s['heartbeat_p50_ms']} / {s['heartbeat_p95_ms']} / {s['heartbeat_p99_ms']} / {s['heartbeat_max_ms']}",
        ),
        _row("heartbeat errors", s["heartbeat_errors"]),
        _row("heartbeats answered early (work, aborts)", s["heartbeats_woken"]),
        _row("server CPU s per 1,000 heartbeats (agent-tier workers)", s["server_cpu_seconds_per_1000_heartbeats"]),
        *(
            [_row("nginx CPU s per 1,000 heartbeats", s["nginx_cpu_seconds_per_1000_heartbeats"])]
            if "nginx_cpu_seconds_per_1000_heartbeats" in s
            else []
        ),
        *(
            [_row("database time per heartbeat (ms, this run's database)", s["database_ms_per_heartbeat"])]
            if "database_ms_per_heartbeat" in s
            else []
        ),
        _row("CPU, share of one core", ", ".join(f"{k} {v}" for k, v in s["cpu_share_of_one_core"].items())),
        _row("other processes on the machine (share of one core)", s["other_processes_share_of_one_core"]),
        _row(
            "dispatch latency p50 / p95 / max (ms)",
            f"{s['dispatch_p50_ms']} / {s['dispatch_p95_ms']} / {s['dispatch_max_ms']} "
            f"({s['dispatch_leased']}/{s['dispatch_probes']} jobs)",
        ),
        "",
        f"fan-out: one script job across {f['assets']} assets",
        _row("created and queued in (s)", f["queue_seconds"]),
        _row("first wave leased / results accepted", f"{f['leased']} / {f['results_accepted']} of {f['first_wave']}"),
        _row("all of the first wave leased after (s)", f["all_leased_after_queued_s"]),
        _row("every instruction signed after (s)", f.get("all_signed_after_s")),
        _row("results ingested per second", f["results_per_second"]),
        "",
        *(
            [
                f"intake: one job on each of {r['intake']['jobs']} online agents, released at once",
                _row("created and queued in (s)", r["intake"]["queue_seconds"]),
                _row("leased / results stored", f"{r['intake']['leased']} / {r['intake']['results']}"),
                _row(
                    "first / last result after issue (s)",
                    f"{r['intake']['first_result_after_issue_s']} / {r['intake']['last_result_after_issue_s']}",
                ),
                _row("results stored per second (server clock)", r["intake"]["results_per_second"]),
                "",
            ]
            if "intake" in r
            else []
        ),
        "queries per call (all workers)",
        *(_row(label, f"{q['queries_per_call']}  ({q['calls']} calls)") for label, q in r["queries_per_call"].items()),
        "",
        "garbage-collector pauses of the workers, steady window",
        *(
            _row(f"generation {gen}", f"{g['collections']} collections, {g['seconds']} s, longest {g['longest_ms']} ms")
            for gen, g in r.get("gc_pauses_steady", {}).items()
        ),
        "",
        f"saturation: {o['concurrency']} closed-loop callers, {o['saturate']} s each",
        *(
            _row(
                f"{name} requests/s, p50 / p99 (ms)",
                f"{x['requests_per_second']}, {x['p50_ms']} / {x['p99_ms']}  "
                f"(errors {x['errors']}, {x['server_cpu_ms_per_request']} ms worker CPU per call)",
            )
            for name, x in ((k, sat[k]) for k in ("heartbeat", "bare"))
        ),
        *(
            _row(f"{name}: nginx CPU per call (ms)", sat[name]["nginx_cpu_ms_per_request"])
            for name in ("heartbeat", "bare")
            if "nginx_cpu_ms_per_request" in sat[name]
        ),
        _row("heartbeat throughput as a share of the bare endpoint", f"{sat['heartbeat_share_of_bare']:.0%}"),
        "",
        _row("simulator CPU s (fleet phase)", r["simulator_cpu_seconds_fleet_phase"]),
        _row("server peak memory (MiB)", ", ".join(f"{k} {v}" for k, v in r["server_peak_memory_mib"].items())),
        _row("errors", r["errors"] or "none"),
        *(
            [
                _row("nginx answers by status (whole run)", r["proxy"]["statuses"]),
                _row("nginx 5xx answers (whole run)", sum(n for k, n in r["proxy"]["statuses"].items() if k[0] == "5")),
                _row("nginx upstream errors (error log)", r["proxy"]["upstream_errors"] or "none"),
            ]
            if "proxy" in r
            else []
        ),
    ]
    return "\n".join(lines)
