"""POST /api/v1/agent/output/: a running instruction's output so far, from its own agent only,
kept as a bounded tail in the cache (never the database), in a constant number of queries."""

import json

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from rmm.engine.events import site_group
from rmm.engine.models import Instruction
from rmm.engine.services import output as live_output
from rmm.history.models import HistoryEvent
from rmm_agent.protocol import CAPABILITIES, LIVE_CHUNK_BYTES, LIVE_TAIL_BYTES
from scripting import services as scripting
from tests.helpers import approved_authority, approved_script, heartbeat, make_agent, post_json, report

PATH = "/api/v1/agent/output/"
MAX_OUTPUT_CALL = 2  # the agent, the instruction


@pytest.fixture
def world(caller, site):
    psa = caller("psa", "psa")
    script = approved_script(caller("tech", "technician").user, caller("boss", "approver").user)
    return psa, approved_authority(site, psa.user), script


@pytest.fixture
def paced(monkeypatch):
    """Calls may come back to back (the spacing has a test of its own)."""
    monkeypatch.setattr(live_output, "MIN_SPACING_SECONDS", 0)


def running(world, site, capabilities=CAPABILITIES):
    """A script job's instruction leased to a fresh agent; (instruction id, its payload, auth)."""
    psa, task, script = world
    agent, auth = make_agent(site)
    said = {"capabilities": list(capabilities), "key_ids": [agent.signing_key_id]}
    heartbeat(auth, **said)  # what it can do is known before its job is signed
    scripting.create_script_job(psa.user, script_id=script.pk, asset_id=agent.asset_id, psa_task_id=task.pk)
    envelope = heartbeat(auth, **said)["instructions"][0]
    payload = json.loads(envelope["payload"])
    return payload["instruction_id"], payload, auth


def send(auth, body, expect):
    r = post_json(Client(), PATH, body, HTTP_AUTHORIZATION=auth)
    assert r.status_code == expect, r.content
    return r


def chunk(instruction_id, text, offset=0, stream="stdout"):
    return {"instruction_id": instruction_id, stream: {"offset": offset, "text": text}}


def test_only_an_agent_that_names_the_capability_is_offered_it(world, site):
    _, offered, _ = running(world, site)
    _, plain, _ = running(world, site, capabilities=[name for name in CAPABILITIES if name != "live_output"])
    assert offered["live_output"] is True
    assert "live_output" not in plain  # signed exactly as before


@pytest.mark.usefixtures("paced")
def test_output_is_kept_in_order_resends_once_and_gaps_are_marked(world, site):
    inst_id, _, auth = running(world, site)
    assert send(auth, chunk(inst_id, "first\n"), 200).json() == {"status": "accepted"}
    send(auth, chunk(inst_id, "first\nsecond\n"), 200)  # its answer was lost: only "second" is new
    send(auth, chunk(inst_id, "oops\n", stream="stderr"), 200)
    send(auth, chunk(inst_id, "late\n", offset=20), 200)  # the agent dropped 7 characters
    held = live_output.output_so_far(inst_id)
    assert held["stdout"].text == "first\nsecond\n\n[… 7 characters not sent …]\nlate\n"
    assert held["stdout"].total == 25
    assert held["stderr"].text == "oops\n"
    # Never the record: the database holds nothing of it, and the result is taken as sent.
    assert Instruction.objects.get(pk=inst_id).outcome == ""
    assert report(auth, inst_id, stdout="the record\n").status_code == 201


@pytest.mark.usefixtures("paced")
def test_the_tail_is_bounded(world, site):
    inst_id, _, auth = running(world, site)
    block = "x" * (LIVE_CHUNK_BYTES - 1) + "\n"
    for n in range(3):
        send(auth, chunk(inst_id, block, offset=n * len(block)), 200)
    held = live_output.output_so_far(inst_id)["stdout"]
    assert len(held.text.encode()) == LIVE_TAIL_BYTES and held.total == 3 * len(block)


@pytest.mark.usefixtures("paced")
def test_a_call_costs_the_same_few_queries_whatever_it_carries(world, site):
    inst_id, _, auth = running(world, site)
    counts = []
    for n, text in enumerate(["a\n", "b" * LIVE_CHUNK_BYTES]):
        with CaptureQueriesContext(connection) as ctx:
            send(auth, {**chunk(inst_id, text, offset=n * 10**6), **chunk(inst_id, text, stream="stderr")}, 200)
        counts.append(len(ctx.captured_queries))
    assert counts[0] == counts[1] <= MAX_OUTPUT_CALL, counts


def test_calls_faster_than_the_protocol_allows_are_throttled(world, site):
    inst_id, _, auth = running(world, site)
    send(auth, chunk(inst_id, "one\n"), 200)
    r = send(auth, chunk(inst_id, "two\n", offset=4), 429)
    assert int(r["Retry-After"]) >= 1
    assert live_output.output_so_far(inst_id)["stdout"].text == "one\n"


def test_another_agents_or_a_finished_instruction_is_refused_and_recorded(world, site):
    inst_id, _, auth = running(world, site)
    _, other_auth = make_agent(site)
    r = send(other_auth, chunk(inst_id, "not mine\n"), 409)
    assert "not this agent's instruction" in r.json()["detail"]
    assert report(auth, inst_id).status_code == 201
    r = send(auth, chunk(inst_id, "after the end\n"), 409)
    assert "succeeded" in r.json()["detail"]
    reasons = list(
        HistoryEvent.objects.filter(action="refused.output", subject_id=inst_id).values_list("payload", flat=True)
    )
    assert [p["reason"] for p in reasons] == [
        "live output: not this agent's instruction",
        "live output: the instruction is succeeded",
    ]
    assert live_output.output_so_far(inst_id) == {}


def test_an_unknown_instruction_is_404_and_no_credential_is_401(world, site):
    inst_id, _, auth = running(world, site)
    send(auth, chunk("6f1c3a52-0000-4000-8000-000000000000", "x"), 404)
    send("Agent nobody:wrong", chunk(inst_id, "x"), 401)
    send("", chunk(inst_id, "x"), 401)


@pytest.mark.parametrize(
    ("body", "field", "status"),
    [
        ({"stdout": {"offset": 0, "text": "x"}}, "instruction_id", 400),
        ({"instruction_id": "{id}"}, "stdout", 400),
        ({"instruction_id": "{id}", "stdout": "x"}, "stdout", 400),
        ({"instruction_id": "{id}", "stdout": {"offset": -1, "text": "x"}}, "stdout.offset", 400),
        ({"instruction_id": "{id}", "stderr": {"offset": True, "text": "x"}}, "stderr.offset", 400),
        ({"instruction_id": "{id}", "stdout": {"offset": 0, "text": 5}}, "stdout.text", 400),
        ({"instruction_id": "{id}", "stdout": {"offset": 0, "text": "\ud800"}}, "stdout.text", 400),
        ({"instruction_id": "{id}", "stdout": {"offset": 0, "text": "é" * LIVE_CHUNK_BYTES}}, "stdout.text", 413),
    ],
    ids=["no-id", "no-stream", "not-object", "negative", "bool", "not-text", "surrogate", "too-large"],
)
def test_bad_input_is_refused_naming_the_field(world, site, body, field, status):
    inst_id, _, auth = running(world, site)
    body = json.loads(json.dumps(body).replace("{id}", inst_id))
    assert field in send(auth, body, status).json()
    assert live_output.output_so_far(inst_id) == {}


@pytest.mark.usefixtures("paced")
def test_new_output_is_pushed_to_the_sites_console_group(world, site, django_capture_on_commit_callbacks):
    inst_id, payload, auth = running(world, site)
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(site_group(site.pk), channel)
    with django_capture_on_commit_callbacks(execute=True) as pushes:
        send(auth, chunk(inst_id, "hello\n"), 200)
        send(auth, chunk(inst_id, "hello\n"), 200)  # nothing new: nothing pushed
    assert len(pushes) == 1
    event = async_to_sync(layer.receive)(channel)["event"]
    assert event == {
        "type": "job_output",
        "kind": "script",
        "id": payload["job_id"],
        "instruction": inst_id,
        "site": str(site.pk),
        "stdout": {"from": 0, "to": 6, "text": "hello\n"},
    }
