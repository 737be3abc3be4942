"""The scan intake's queries per report do not grow with the packages (issue 16: 10,000 assets ×
2,000 packages a day): a day's delta and an unchanged report cost the same queries for 100 and
1,000 packages, with the reports the benchmark (bench/patching_bench.py) sends."""

from __future__ import annotations

from bench.patching_bench import document, report_once
from rmm.inventory.models import Asset


def costs(site, packages: int) -> dict:
    asset = Asset.objects.create(site=site, hostname=f"bench-{packages}", os="Linux")
    report_once(asset.pk, document(packages, 0))
    _, delta, written = report_once(asset.pk, document(packages, 1))
    _, same, nothing = report_once(asset.pk, document(packages, 1))
    return {"delta": delta, "written": written, "same": same, "nothing": nothing}


def test_queries_per_report_are_constant(site):
    small, large = costs(site, 100), costs(site, 1000)
    assert small["delta"] == large["delta"] and small["same"] == large["same"]
    # the digest read and the time stamped (and the savepoint around the report, in a test)
    assert small["same"] == 4 and small["nothing"] == 0
    # a day's delta: 5 upgraded (installed, their old versions superseded) and 1 new update
    assert small["written"] == large["written"] == 12
