"""A destination's lag behind the history (docs/integrations.md#the-siem-feed): a page of them is
read in the same number of queries whatever its length, over the API and in the shell, and a
restricted one counts its sites' events alone."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from rmm.history.services import append
from rmm.siem import services as siem
from rmm.siem.models import Destination

pytestmark = pytest.mark.django_db


def make(root, n: int, start: int) -> None:
    for i in range(start, start + n):
        sites = ["alpha"] if i % 2 else []
        siem.create_destination(root.user, kind="syslog", address="127.0.0.1:9", sites=sites, name=f"siem-{i}")


def behind(name: str) -> int:
    """An unrestricted destination's lag: every event after its cursor (of any site, or none)."""
    return siem.head() - Destination.objects.get(name=name).cursor


def listed(root) -> tuple[int, dict]:
    with CaptureQueriesContext(connection) as queries:
        response = root.get("/api/v1/siem-destinations/")
    assert response.status_code == 200, response.content
    return len(queries), {item["name"]: item["lag"] for item in response.json()["results"]}


def test_the_api_reads_a_page_of_lags_in_as_many_queries_whatever_its_length(caller, site, other_site):
    root = caller("root", "admin")
    listed(root)  # the first request of a session reads more than the page
    make(root, 2, 0)
    for n in range(4):
        append("system", "test.alpha", site, site_id=site.pk, payload={"n": n})
        append("system", "test.beta", other_site, site_id=other_site.pk, payload={"n": n})
    few, lags = listed(root)
    assert lags == {"siem-0": behind("siem-0"), "siem-1": 4}  # every event, or alpha's alone
    make(root, 6, 2)
    append("system", "test.alpha", site, site_id=site.pk)
    many, lags = listed(root)
    assert len(lags) == 8 and lags["siem-1"] == 5 and lags["siem-7"] == 1 and lags["siem-0"] == behind("siem-0")
    assert many == few, (few, many)


def shell_list() -> tuple[int, dict]:
    out = StringIO()
    with CaptureQueriesContext(connection) as queries:
        call_command("rmm_siem", "list", stdout=out)
    return len(queries), {line.split("\t")[1]: line for line in out.getvalue().splitlines()}


def test_the_shell_lists_each_destinations_lag_in_as_many_queries_whatever_their_number(caller, site, other_site):
    root = caller("root", "admin")
    make(root, 2, 0)
    append("system", "test.beta", other_site, site_id=other_site.pk)
    few, lines = shell_list()
    assert f"\tlag={behind('siem-0')} (" in lines["siem-0"] and "\tlag=0 (" in lines["siem-1"]
    make(root, 6, 2)
    append("system", "test.alpha", site, site_id=site.pk)
    many, lines = shell_list()
    assert len(lines) == 8 and "\tlag=1 (" in lines["siem-1"] and "\tlag=1 (" in lines["siem-7"]
    assert many == few, (few, many)


def test_the_integrations_bench_samples_the_lag_as_the_service_reads_it(caller, site, other_site):
    """bench/integrations_bench.py reads the lag through the service (a restricted destination's
    sites alone), on any database."""
    from bench import integrations_bench

    root = caller("root", "admin")
    made = siem.create_destination(root.user, kind="syslog", address="127.0.0.1:9", sites=["alpha"])
    assert integrations_bench.lag_sample(str(made.pk)) == siem.Lag(0, 0.0)
    append("system", "test.beta", other_site, site_id=other_site.pk)
    append("system", "test.alpha", site, site_id=site.pk)
    sampled = integrations_bench.lag_sample(str(made.pk))
    assert sampled.events == 1 and sampled.seconds >= 0
