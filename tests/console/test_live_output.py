"""The job page's "Output so far": a running job shows what its agent streamed, marked as not the
recorded result; an agent that cannot stream is named; the result replaces it."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from rmm.engine.services import output as live_output
from rmm_agent.protocol import CAPABILITIES
from scripting import services as scripting
from tests.helpers import heartbeat, make_agent, post_json, report

pytestmark = pytest.mark.django_db


def running_job(w, capabilities):
    """A script job on a fresh agent of alpha, leased; (job, instruction id, agent auth)."""
    agent, auth = make_agent(w["alpha"])
    said = {"capabilities": capabilities, "key_ids": [agent.signing_key_id]}
    heartbeat(auth, **said)
    job = scripting.create_script_job(
        w["psa"], script_id=w["script"].pk, asset_id=agent.asset_id, psa_task_id=w["task"].pk
    )
    payload = json.loads(heartbeat(auth, **said)["instructions"][0]["payload"])
    return job, payload["instruction_id"], auth


def page(w, job) -> str:
    response = w["client"].get(f"/console/jobs/script/{job.pk}/")
    assert response.status_code == 200
    return response.content.decode()


def test_a_running_job_shows_its_output_so_far_until_the_result_replaces_it(world, monkeypatch):
    monkeypatch.setattr(live_output, "MIN_SPACING_SECONDS", 0)
    job, inst_id, auth = running_job(world, list(CAPABILITIES))
    body = page(world, job)
    assert "Output so far" in body and "not the recorded result" in body
    assert '<pre id="live-stdout" data-total="0"' in body

    for text, offset in (("first <line>\n", 0), ("second\n", 13)):
        r = post_json(
            Client(),
            "/api/v1/agent/output/",
            {"instruction_id": inst_id, "stdout": {"offset": offset, "text": text}},
            HTTP_AUTHORIZATION=auth,
        )
        assert r.status_code == 200, r.content
    body = page(world, job)
    assert '<pre id="live-stdout" data-total="20" aria-live="polite">first &lt;line&gt;\nsecond\n</pre>' in body
    assert f'data-instruction="{inst_id}"' in body

    assert report(auth, inst_id, stdout="the record\n").status_code == 201
    body = page(world, job)
    assert "Output so far" not in body
    assert '<pre id="stdout">the record\n</pre>' in body


def test_an_agent_that_cannot_stream_is_named(world):
    job, _, _ = running_job(world, [name for name in CAPABILITIES if name != "live_output"])
    body = page(world, job)
    assert "Live output is not available from this agent" in body
    assert 'id="live-stdout"' not in body


def test_a_queued_job_has_no_output_section(world):
    job = scripting.create_script_job(
        world["psa"], script_id=world["script"].pk, asset_id=world["agents"][0].asset_id, psa_task_id=world["task"].pk
    )
    assert "Output so far" not in page(world, job)
