"""Artefacts by hash, on the server: a step of a kind names blobs of the store; its signed payload
lists each with a URL bound to the agent, the instruction and the hash; the agent fetches it
(whole, or a byte range), only while the instruction runs; a protocol-1 agent is never given such
a step (docs/agent.md, Artefacts)."""

import asyncio
import io
import json
import os
import time
import uuid

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from rmm.core import blobs
from rmm.engine import agent_views, registry
from rmm.engine.models import Instruction
from rmm.engine.services import fetching, steps
from rmm.history.models import HistoryEvent
from rmm_agent.results import make_result
from tests.helpers import approved_authority, make_agent
from tests.stepkind.jobs import create_step_job
from tests.stepkind.models import StepJob

DATA = os.urandom(1000)


@pytest.fixture
def w(caller, site, settings, evidence_store):
    settings.RMM_HEARTBEAT_MIN_SPACING_SECONDS = 0
    psa = caller("psa", "psa")
    task = approved_authority(site, psa.user)
    agent, auth = make_agent(site, "fetcher")
    digest, _ = blobs.store(DATA, folder="stepkind", extension="bin", action="test.artefact")
    artefact = {
        "step": 0,
        "name": "payload.bin",
        "sha256": digest,
        "size": len(DATA),
        "blob": blobs.content_name("stepkind", digest, "bin"),
    }

    class World:
        pass

    world = World()
    world.psa, world.task, world.agent, world.auth, world.artefact, world.store = (
        psa,
        task,
        agent,
        auth,
        artefact,
        evidence_store,
    )
    return world


def make_job(w, steps=1, agent=None) -> StepJob:
    asset = (agent or w.agent).asset
    return create_step_job(w.psa.user, asset=asset, task=w.task, steps=steps, artefact=w.artefact)


def heartbeat(auth, protocol: int | None = 2, running=()) -> dict:
    body = {"capacity": 1, "running": list(running)}
    if protocol is not None:
        body["protocol"] = protocol
    r = Client().post(
        "/api/v1/agent/heartbeat/", json.dumps(body), content_type="application/json", HTTP_AUTHORIZATION=auth
    )
    assert r.status_code == 200, r.content
    return r.json()


def leased(auth, protocol: int | None = 2) -> list[dict]:
    return [json.loads(item["payload"]) for item in heartbeat(auth, protocol)["instructions"]]


def fetch(url: str, auth: str | None, **headers):
    extra = {f"HTTP_{key.upper()}": value for key, value in headers.items()}
    if auth:
        extra["HTTP_AUTHORIZATION"] = auth
    return Client().get(url, **extra)


def body(response) -> bytes:
    async def collect(parts):
        return b"".join([part async for part in parts])

    return async_to_sync(collect)(response.streaming_content)


def refusals() -> list[dict]:
    return list(
        HistoryEvent.objects.filter(action="refused.artefact.fetch")
        .order_by("sequence")
        .values_list("payload", flat=True)
    )


def test_the_signed_payload_lists_each_artefact_with_a_url_bound_to_the_agent_and_instruction(w):
    job = make_job(w, steps=2)
    [payload] = leased(w.auth)
    [listed] = payload["artefacts"]
    sha = w.artefact["sha256"]
    assert {key: listed[key] for key in ("name", "sha256", "size")} == {
        "name": "payload.bin",
        "sha256": sha,
        "size": 1000,
    }
    path, _, query = listed["url"].partition("?")
    assert path == f"/api/v1/agent/artefacts/{payload['instruction_id']}/{sha}/"
    inst = Instruction.objects.get(pk=payload["instruction_id"])
    assert inst.artefacts == [{key: w.artefact[key] for key in ("name", "sha256", "size", "blob")}]
    expires = int(query.split("expires=")[1].split("&")[0])
    assert expires == int(inst.not_after.timestamp()) + inst.timeout_seconds  # it cannot run later
    # The step that names none is signed as before: no "artefacts" at all.
    report = make_result(payload["instruction_id"], "completed", exit_code=0, stdout="step 0\n")
    Client().post(
        "/api/v1/agent/results/", json.dumps(report), content_type="application/json", HTTP_AUTHORIZATION=w.auth
    )
    [second] = leased(w.auth)
    assert second["step"] == 1 and "artefacts" not in second
    assert StepJob.objects.get(pk=job.pk).status == "running"


def test_the_agent_fetches_its_artefact_whole_or_from_a_byte_on(w):
    make_job(w)
    [payload] = leased(w.auth)
    url = payload["artefacts"][0]["url"]
    whole = fetch(url, w.auth)
    assert (whole.status_code, whole["Content-Length"], whole["Accept-Ranges"]) == (200, "1000", "bytes")
    assert body(whole) == DATA
    for asked, (first, last) in {"bytes=100-": (100, 999), "bytes=10-19": (10, 19), "bytes=-5": (995, 999)}.items():
        part = fetch(url, w.auth, range=asked)
        assert part.status_code == 206, asked
        assert part["Content-Range"] == f"bytes {first}-{last}/1000"
        assert body(part) == DATA[first : last + 1]
    for bad in ("bytes=1000-", "bytes=20-10", "bytes=abc", "bytes=0-1,5-6", "bytes=-0"):
        refused = fetch(url, w.auth, range=bad)
        assert (refused.status_code, refused["Content-Range"]) == (416, "bytes */1000"), bad


def test_a_fetch_costs_two_queries(w):
    make_job(w)
    [payload] = leased(w.auth)
    with CaptureQueriesContext(connection) as ctx:
        answer = fetch(payload["artefacts"][0]["url"], w.auth, range="bytes=0-9")
    assert answer.status_code == 206
    assert len(ctx.captured_queries) == 2  # the agent's credential, the instruction


def test_a_url_serves_only_its_agent_its_instruction_and_its_blob_while_it_runs(w, site):
    make_job(w)
    [payload] = leased(w.auth)
    url, sha, inst_id = payload["artefacts"][0]["url"], w.artefact["sha256"], payload["instruction_id"]
    path, _, query = url.partition("?")
    other, other_auth = make_agent(site, "other")
    assert fetch(url, None).status_code == 401
    assert fetch(url, other_auth).status_code == 403  # the token names another agent
    assert fetch(path + "?expires=99999999999&token=" + "0" * 64, w.auth).status_code == 403
    assert fetch(path, w.auth).status_code == 403  # no token at all
    past = fetching.url(w.agent.pk, inst_id, sha, int(time.time()) - 1)
    assert fetch(past, w.auth).status_code == 403  # expired, though its token is right
    elsewhere = fetching.url(w.agent.pk, uuid.uuid4(), sha, int(time.time()) + 60)
    assert fetch(elsewhere, w.auth).status_code == 404  # no such instruction of this agent
    unnamed = fetching.url(w.agent.pk, inst_id, "a" * 64, int(time.time()) + 60)
    assert fetch(unnamed, w.auth).status_code == 404  # the instruction names no such blob
    report = make_result(inst_id, "completed", exit_code=0, stdout="step 0\n")
    Client().post(
        "/api/v1/agent/results/", json.dumps(report), content_type="application/json", HTTP_AUTHORIZATION=w.auth
    )
    assert fetch(url, w.auth).status_code == 403  # no longer running
    reasons = [event["reason"] for event in refusals()]
    assert reasons == [
        "the token was not made for this agent, instruction and artefact",
        "the token was not made for this agent, instruction and artefact",
        "the token was not made for this agent, instruction and artefact",
        "the artefact URL has expired",
        "no instruction of this agent names this artefact",
        "no instruction of this agent names this artefact",
        "the instruction is not running (it is succeeded)",
    ]
    assert refusals()[0]["instruction_id"] == inst_id


def test_a_queued_instruction_is_not_served_yet(w):
    make_job(w)
    inst = Instruction.objects.get()
    url = json.loads(inst.payload)["artefacts"][0]["url"]
    assert fetch(url, w.auth).status_code == 403


def test_a_blob_missing_from_the_store_is_a_404_recorded(w, settings):
    make_job(w)
    [payload] = leased(w.auth)
    os.unlink(os.path.join(settings.STORAGES["default"]["OPTIONS"]["location"], w.artefact["blob"]))
    assert fetch(payload["artefacts"][0]["url"], w.auth).status_code == 404
    assert refusals()[-1]["reason"] == "the artefact is missing from the store"


def test_the_proxy_sends_the_bytes_where_configured(w, settings):
    settings.RMM_ARTEFACT_ACCEL_REDIRECT = "/_artefacts/"
    make_job(w)
    [payload] = leased(w.auth)
    answer = fetch(payload["artefacts"][0]["url"], w.auth, range="bytes=5-")
    assert answer.status_code == 200 and answer.content == b""
    assert answer["X-Accel-Redirect"] == "/_artefacts/" + w.artefact["blob"]
    assert fetch(payload["artefacts"][0]["url"], None).status_code == 401  # never without the checks


@pytest.mark.parametrize("protocol", [None, 1])
def test_a_protocol_1_agent_is_never_given_a_step_with_artefacts(w, protocol):
    job = make_job(w)
    assert leased(w.auth, protocol) == []  # it would run the step without its file
    inst = Instruction.objects.get()
    assert inst.status == "aborted"
    assert "the agent (protocol 1) cannot fetch" in inst.reason
    assert StepJob.objects.get(pk=job.pk).status == "aborted"


def test_a_protocol_1_agent_still_gets_steps_without_artefacts(w):
    w.artefact["step"] = 1
    make_job(w, steps=2)
    [payload] = leased(w.auth, None)
    assert payload["step"] == 0 and "artefacts" not in payload


def test_a_kind_must_name_artefacts_the_agent_can_use(w):
    spec = registry.InstructionSpec(asset=w.agent.asset, interpreter="sh", content="true")
    good = registry.Artefact("a.bin", "0" * 64, 1, "x/y")
    steps.check([spec.__class__(**{**vars(spec), "artefacts": (good,)})])
    for bad in (
        (registry.Artefact("../a", "0" * 64, 1, "x"),),
        (registry.Artefact("a.bin", "0" * 63, 1, "x"),),
        (registry.Artefact("a.bin", "0" * 64, -1, "x"),),
        (good, registry.Artefact("A_BIN", "0" * 64, 1, "x")),  # the same variable: RMM_ARTEFACT_A_BIN
    ):
        with pytest.raises(ValueError):
            steps.check([spec.__class__(**{**vars(spec), "artefacts": bad})])


def test_a_transfer_stops_once_the_agent_has_gone():
    chunk = agent_views.ARTEFACT_CHUNK
    blob = io.BytesIO(DATA * (3 * chunk // len(DATA) + 1))

    async def serve() -> tuple[bytes, list]:
        call = agent_views.Serving(asyncio.get_running_loop().create_future())
        token = agent_views.serving.set(call)
        try:
            parts = agent_views._blob_chunks(blob, 3 * chunk)
            first = await anext(parts)
            call.gone.set_result(None)  # the connection dropped, as the agent protocol's handler sees it
            return first, [part async for part in parts]
        finally:
            agent_views.serving.reset(token)

    first, rest = async_to_sync(serve)()
    assert len(first) == chunk and rest == []
    assert blob.closed
