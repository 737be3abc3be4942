"""``python -m bench``: the fleet benchmark (``make bench``). See docs/performance.md."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench.report import table
from bench.run import Bench, Options


def main(argv: list[str] | None = None) -> int:
    defaults = Options()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--fleet", type=int, default=defaults.fleet, help="online simulated agents")
    parser.add_argument("--interval", type=int, default=defaults.interval, help="heartbeat interval (s)")
    parser.add_argument("--duration", type=int, default=defaults.duration, help="measured steady window (s)")
    parser.add_argument("--workers", type=int, default=defaults.workers, help="agent-tier worker processes")
    parser.add_argument(
        "--api-workers", type=int, default=defaults.api_workers, help="daphne workers for the API (0: the agent tier)"
    )
    parser.add_argument("--server", choices=["daphne", "uvicorn"], default=defaults.server, help="ASGI server")
    parser.add_argument(
        "--proxy",
        choices=["", "nginx"],
        default=defaults.proxy,
        help="nginx: the agents call through Debian's nginx running deploy/nginx/rmm.conf, over https",
    )
    parser.add_argument("--sim", type=int, default=defaults.sim, help="simulator processes")
    parser.add_argument("--fanout", type=int, default=defaults.fanout, help="assets in the fan-out job")
    parser.add_argument(
        "--intake", type=int, default=defaults.intake, help="agents given a job each at once in the intake phase"
    )
    parser.add_argument("--wave", type=int, default=defaults.wave, help="RMM_WAVE_SIZE (0: the online fleet)")
    parser.add_argument("--saturate", type=int, default=defaults.saturate, help="seconds per saturation run")
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency, help="saturation callers")
    parser.add_argument(
        "--facts-change",
        type=float,
        default=defaults.facts_change,
        help="share of heartbeats in which a fact namespace changes (only it travels)",
    )
    parser.add_argument("--no-hold", dest="hold", action="store_false", help="heartbeats answered at once, no wake-ups")
    parser.add_argument("--out", default="", help="JSON report path (default var/bench/<time>.json)")
    options = Options(**vars(parser.parse_args(argv)))
    report = Bench(options).run()
    out = Path(options.out or f"var/bench/bench-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
