"""What bench/profiles_bench.py relies on: taking in one asset's 50-item audit result costs the same
number of queries however many assets of the batch were taken in before it (and however many
items: tests/profiles/test_audits.py)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from profiles import audits
from rmm.engine import services as engine
from rmm_agent.results import make_result
from tests.helpers import approved_authority, make_agent
from tests.profiles.test_audits import ECHO_READ, assign, document, items_of, profile_of
from tests.support.profiles import approved_key


@pytest.mark.parametrize("drifted", [False, True], ids=["compliant", "drifted"])
def test_a_results_queries_do_not_grow_with_the_assets_taken_in_before(caller, site, settings, drifted):
    settings.RMM_WAVE_SIZE = 100  # the whole batch released at once, as in the benchmark
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    approved_key(tech.user, boss.user, name="test.echo", read=ECHO_READ, parameters=("value",))
    agents = [make_agent(site, f"web-{n:02}")[0] for n in range(7)]
    w = type("W", (), {"tech": tech, "task": approved_authority(site, psa.user)})
    profile = profile_of(w, 50)
    jobs = audits.request_audit(psa.user, assign(w, profile, site=site).pk)
    assert len(jobs) == 7
    items = items_of(profile)
    now = timezone.now()
    leased = [(agent, engine.lease(agent, 4, now)[0]) for agent in agents]
    counts = []
    for agent, inst in leased:
        values = {
            item: (0, b"drifted\n" if drifted and n == 0 else f"value-{n}\n".encode()) for n, item in enumerate(items)
        }
        with CaptureQueriesContext(connection) as seen:
            status, _ = engine.ingest_result(
                agent, make_result(str(inst.pk), "completed", exit_code=0, stdout=document(values))
            )
        assert status == 201
        counts.append(len(seen))
    # every result costs the same; the last one also ends the batch (one query more)
    expected = {"sqlite": 22, "postgresql": 24}[connection.vendor] + (3 if drifted else 0)
    assert counts == [expected] * 6 + [expected + 1], counts
