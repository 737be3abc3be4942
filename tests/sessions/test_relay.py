"""The built-in terminal's relay in process (issue 18, parts 2, 3, 4 and 6): the real consumers on
the real ASGI application and channel layer, an agent's credential on one side and a signed-in
browser with a join token on the other. Every frame is recorded; the recording is sealed in
chunks chained by hash; storage that cannot be written, the maximum duration and the kill switch
end the session at once; join tokens, agents and frames that may not relay are refused and
recorded."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import time
from datetime import timedelta
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings as django_settings
from django.core.files.storage import default_storage
from django.db import connection
from django.test import Client
from django.utils import timezone
from django.utils.module_loading import import_string
from django_q.models import Schedule

from evidence.models import RmmEvidence
from rmm.core.errors import Forbidden
from rmm.engine.services import kill_switches
from rmm.history.models import HistoryEvent
from rmm.inventory.models import Agent
from sessions import recording, services
from sessions.models import JoinToken, RecordingChunk, RemoteSession
from tests.helpers import heartbeat, make_agent
from tests.sessions.helpers import online, open_, set_policy


@pytest.fixture(autouse=True)
def _one_connection(monkeypatch):
    """The consumers' database calls share the test's connection (and its transaction)."""
    import channels.db

    monkeypatch.setattr(channels.db, "close_old_connections", lambda: None)


def agent_side(session_id, auth: str):
    from channels.testing import WebsocketCommunicator

    from rmm.asgi import application

    return WebsocketCommunicator(
        application, f"/ws/agent/sessions/{session_id}/", headers=[(b"authorization", auth.encode())]
    )


def signed_in(user) -> str:
    """The session cookie of ``user`` signed in (made before the scenario's event loop runs)."""
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def browser_side(session_id, cookie: str, token: str):
    from channels.testing import WebsocketCommunicator

    from rmm.asgi import application

    return WebsocketCommunicator(
        application,
        f"/ws/sessions/{session_id}/?token={token}",
        headers=[
            (b"cookie", cookie.encode()),
            (b"origin", b"http://127.0.0.1"),
            (b"host", b"127.0.0.1"),
        ],
    )


def running_session(world) -> RemoteSession:
    """A session whose step the agent has leased (its job is running)."""
    sid = open_(world).json()["id"]
    assert heartbeat(world["auth"])["instructions"]
    session = RemoteSession.objects.get(pk=sid)
    assert session.status == "running"
    return session


def refusals(action: str) -> list[str]:
    return [e.payload["reason"] for e in HistoryEvent.objects.filter(action=f"refused.{action}").order_by("sequence")]


def ended(comm_output: dict) -> bool:
    return comm_output["type"] == "websocket.close"


def test_both_ways_are_relayed_recorded_and_sealed_in_a_chain_that_verifies(
    world, django_capture_on_commit_callbacks, settings
):
    settings.RMM_TASKS_SYNC = True  # the seal task runs as its cause commits
    session = running_session(world)
    token, mode = services.mint_join_token(world["tech"].user, session)
    assert mode == "interactive"
    tech = signed_in(world["tech"].user)

    async def scenario():
        agent = agent_side(session.pk, world["auth"])
        assert (await agent.connect())[0]
        browser = browser_side(session.pk, tech, token)
        assert (await browser.connect())[0]
        await browser.send_to(bytes_data=b"id -u\n")
        typed = await agent.receive_from(timeout=5)
        await agent.send_to(bytes_data=b"1001\r\n\xff$ ")  # not UTF-8: kept all the same
        shown = await browser.receive_from(timeout=5)

        def end():
            with django_capture_on_commit_callbacks(execute=True):
                services.end_session(world["tech"].user, RemoteSession.objects.get(pk=session.pk))
            ended_at.append(len(connection.run_on_commit))

        await sync_to_async(end)()
        closed = (await agent.receive_output(timeout=5), await browser.receive_output(timeout=5))

        await agent.disconnect()
        await browser.disconnect()
        return typed, shown, closed

    ended_at = []
    typed, shown, closed = async_to_sync(scenario)()
    for _, callback, _ in connection.run_on_commit[ended_at[0] :]:
        callback()  # the relay's last chunk committed: the seal task runs
    assert typed == b"id -u\n" and shown == b"1001\r\n\xff$ "
    assert ended(closed[0]) and closed[1]["text"].endswith("[session ended: user]\r\n")
    session.refresh_from_db()
    assert session.recorded and session.relay_opened_at and session.end_reason == "user"
    record = RmmEvidence.objects.get(related_id=session.pk, evidence_type="session_recording")
    assert record.hash == session.recording_sha256
    with default_storage.open(record.storage_uri.split("/", 3)[-1], "rb") as fh:
        cast = fh.read()
    assert cast.count(b"\n") == 3  # the header, one frame in, one out
    assert b'"i", "id -u\\n"' in cast and b'"o", "1001\\r\\n\\udcff$ "' in cast
    chunks = recording.verify_chunks(session.pk)
    assert [c["index"] for c in chunks] == list(range(len(chunks))) and sum(c["size"] for c in chunks) == len(cast)
    assert HistoryEvent.objects.filter(action="session.started", subject_id=str(session.pk)).exists()

    # a chunk edited in the store breaks the chain, and sealing refuses it, naming the chunk
    first = RecordingChunk.objects.get(session=session, index=0)
    path = Path(django_settings.STORAGES["default"]["OPTIONS"]["location"]) / first.blob
    path.write_bytes(path.read_bytes().replace(b"version", b"versiOn"))
    with pytest.raises(recording.RecordingFailed, match="chunk 0 .* does not match its sha256"):
        recording.seal(session.pk)


@pytest.mark.django_db(transaction=True)
def test_storage_that_cannot_be_written_ends_the_session(world, flushable_append_only):
    """Committed for real: the consumer ends the session in its own call, whose on-commit hangs up."""
    session = running_session(world)
    location = Path(django_settings.STORAGES["default"]["OPTIONS"]["location"])

    async def scenario():
        agent = agent_side(session.pk, world["auth"])
        assert (await agent.connect())[0]
        folder = location / recording.FOLDER
        await sync_to_async(shutil.rmtree)(folder)
        folder.write_bytes(b"")  # where the chunks go is no folder now
        await agent.send_to(bytes_data=b"x" * (recording.CHUNK_BYTES + 1))
        out = await agent.receive_output(timeout=5)
        await agent.disconnect()
        return out

    assert ended(async_to_sync(scenario)())
    session.refresh_from_db()
    assert session.end_reason == "recording_failed" and session.ended_at is not None


@pytest.mark.django_db(transaction=True)
def test_the_maximum_duration_ends_a_live_session(world, flushable_append_only):
    """Committed for real, as above."""
    set_policy(world, max_duration_seconds=1, idle_timeout_seconds=1)
    session = running_session(world)

    async def scenario():
        agent = agent_side(session.pk, world["auth"])
        assert (await agent.connect())[0]
        out = await agent.receive_output(timeout=5)
        await agent.disconnect()
        return out

    assert ended(async_to_sync(scenario)())
    assert RemoteSession.objects.get(pk=session.pk).end_reason == "max_duration"


def test_the_kill_switch_ends_a_live_session_within_a_second(world, django_capture_on_commit_callbacks):
    session = running_session(world)

    async def scenario():
        agent = agent_side(session.pk, world["auth"])
        assert (await agent.connect())[0]

        def engage():
            with django_capture_on_commit_callbacks(execute=True):
                kill_switches.engage(world["tech"].user, scope="asset", target=str(session.asset_id), reason="incident")

        began = time.monotonic()
        await sync_to_async(engage)()
        out = await agent.receive_output(timeout=1)
        took = time.monotonic() - began
        await agent.disconnect()
        return out, took

    out, took = async_to_sync(scenario)()
    assert ended(out) and took < 1
    assert RemoteSession.objects.get(pk=session.pk).end_reason == "kill_switch"


def test_join_tokens_are_single_use_and_for_their_user_and_frames_after_the_end_are_refused(
    world, django_capture_on_commit_callbacks
):
    session = running_session(world)
    token, _ = services.mint_join_token(world["tech"].user, session)
    watch, mode = services.mint_join_token(world["admin"].user, session)
    assert mode == "watch"
    with pytest.raises(Exception, match="Only the technician"):
        services.mint_join_token(world["other_tech"].user, session)
    tech, admin, other = (signed_in(world[who].user) for who in ("tech", "admin", "other_tech"))

    async def scenario():
        stolen = browser_side(session.pk, other, token)
        assert not (await stolen.connect())[0]
        first = browser_side(session.pk, tech, token)
        assert (await first.connect())[0]
        again = browser_side(session.pk, tech, token)
        assert not (await again.connect())[0]
        watcher = browser_side(session.pk, admin, watch)
        assert (await watcher.connect())[0]

        def end():
            with django_capture_on_commit_callbacks(execute=True):
                services.end_session(world["tech"].user, RemoteSession.objects.get(pk=session.pk))

        await sync_to_async(end)()
        await first.receive_output(timeout=5)  # told it ended
        await first.send_to(bytes_data=b"rm -rf /\n")
        refused = await first.receive_output(timeout=5)
        await first.disconnect()
        await watcher.disconnect()
        return refused

    assert ended(async_to_sync(scenario)())
    assert refusals("remote_session.join") == ["join token of another user", "join token used twice"]
    assert refusals("remote_session.frame") == ["a frame on an ended session"]


def test_only_the_agent_holding_the_running_step_opens_the_relay_once(world, site):
    session = running_session(world)
    intruder, intruder_auth = make_agent(site, "term-2")
    online(intruder)

    async def scenario():
        wrong = agent_side(session.pk, world["auth"].rsplit(":", 1)[0] + ":wrong")
        other = agent_side(session.pk, intruder_auth)
        first = agent_side(session.pk, world["auth"])
        second = agent_side(session.pk, world["auth"])
        results = [(await wrong.connect())[1], (await other.connect())[1]]
        assert (await first.connect())[0]
        results.append((await second.connect())[1])
        await first.disconnect()
        return results

    assert async_to_sync(scenario)() == [4401, 4403, 4403]
    assert refusals("remote_session.relay") == [
        "no such session on the agent's asset",
        "the session's relay is already open",
    ]
    assert Agent.objects.filter(pk=intruder.pk).exists()


def test_a_session_in_use_stays_live_through_the_sweep_past_its_idle_limit(world):
    """The relay records activity while bytes flow (not only when a 64 KiB chunk is written), so
    the minute's sweep, which reads it, leaves a session in use alone."""
    set_policy(world, idle_timeout_seconds=3)
    session = running_session(world)

    async def scenario():
        agent = agent_side(session.pk, world["auth"])
        assert (await agent.connect())[0]
        for _ in range(5):  # a little output every second, for longer than the idle limit
            await agent.send_to(bytes_data=b"$ ")
            await asyncio.sleep(1)
        swept = await sync_to_async(services.end_overdue)()
        still = await agent.receive_nothing(timeout=0.1)
        await agent.disconnect()
        return swept, still

    swept, still = async_to_sync(scenario)()
    assert swept == 0 and still
    assert RemoteSession.objects.get(pk=session.pk).end_reason == "agent"  # ended by the hang-up only


@pytest.mark.django_db(transaction=True)
def test_the_relays_timer_counts_the_maximum_duration_from_the_sessions_start(world, flushable_append_only):
    """A relay that connects late (or again on another worker) does not give the session more time."""
    set_policy(world, max_duration_seconds=60, idle_timeout_seconds=60)
    session = running_session(world)
    RemoteSession.objects.filter(pk=session.pk).update(started_at=timezone.now() - timedelta(minutes=2))

    async def scenario():
        agent = agent_side(session.pk, world["auth"])
        assert (await agent.connect())[0]
        out = await agent.receive_output(timeout=3)
        await agent.disconnect()
        return out

    assert ended(async_to_sync(scenario)())
    assert RemoteSession.objects.get(pk=session.pk).end_reason == "max_duration"


def test_a_session_the_sweep_ends_after_its_relay_died_gets_its_recording_sealed(
    world, settings, django_capture_on_commit_callbacks
):
    """Its worker died mid-session: chunks were written, no relay closed. The sweep ends it, and
    its recording is sealed as evidence once the relay's last chunk can no longer come."""
    settings.RMM_TASKS_SYNC = True
    set_policy(world, idle_timeout_seconds=60)
    session = running_session(world)
    now = timezone.now()
    RemoteSession.objects.filter(pk=session.pk).update(relay_opened_at=now, last_activity_at=now)
    recorder = recording.Recorder(session.pk)
    recorder.frame("o", b"$ id -u\r\n1001\r\n")
    recorder.flush()  # what the dead relay wrote
    later = now + timedelta(minutes=5)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.end_overdue(later) == 1
    session.refresh_from_db()
    assert session.end_reason == "idle" and not session.recorded  # its relay's last chunk may still come
    RemoteSession.objects.filter(pk=session.pk).update(ended_at=timezone.now() - services.SEAL_WAIT)
    with django_capture_on_commit_callbacks(execute=True):
        import_string(Schedule.objects.get(name="sessions.end_overdue").func)()  # the next minute's sweep
    session.refresh_from_db()
    record = RmmEvidence.objects.get(related_id=session.pk, evidence_type="session_recording")
    assert session.recorded and record.hash == session.recording_sha256
    assert services.seal_recording(session.pk) == record  # sealing again changes nothing
    assert RmmEvidence.objects.filter(related_id=session.pk, evidence_type="session_recording").count() == 1


def test_a_join_token_older_than_a_minute_is_refused_and_the_sweep_deletes_it(world):
    session = running_session(world)
    token, _ = services.mint_join_token(world["tech"].user, session)
    fresh, _ = services.mint_join_token(world["tech"].user, session)
    JoinToken.objects.filter(token_hash=hashlib.sha256(token.encode()).hexdigest()).update(
        created_at=timezone.now() - timedelta(seconds=61)
    )
    with pytest.raises(Forbidden, match="join token expired"):
        services.redeem_join_token(world["tech"].user, session.pk, token)
    assert refusals("remote_session.join") == ["join token expired"]
    import_string(Schedule.objects.get(name="sessions.end_overdue").func)()
    assert JoinToken.objects.filter(session=session).count() == 1  # the fresh one stays
    assert services.redeem_join_token(world["tech"].user, session.pk, fresh)[1] == "interactive"


def test_the_recording_is_served_only_while_it_matches_its_sha256(world, settings):
    """A byte flipped in the stored recording: the session page refuses it, and says so in the history."""
    settings.RMM_TASKS_SYNC = True
    session = running_session(world)
    recorder = recording.Recorder(session.pk)
    recorder.frame("o", b"$ echo hello\r\nhello\r\n")
    recorder.flush()
    services.end_session(world["tech"].user, session)
    record = services.seal_recording(session.pk)
    path = Path(django_settings.STORAGES["default"]["OPTIONS"]["location"]) / record.storage_uri.split("/", 3)[-1]
    url = f"/console/sessions/{session.pk}/recording.cast"
    browser = Client()
    browser.force_login(world["tech"].user)
    served = browser.get(url)
    assert served.status_code == 200 and b"hello" in b"".join(served.streaming_content)
    path.write_bytes(path.read_bytes().replace(b"hello", b"hellO", 1))
    refused = browser.get(url)
    assert refused.status_code == 409 and b"does not match its sha256" in refused.content
    assert refusals("remote_session.recording") == ["the stored recording does not match its sha256"]


def test_a_chunk_is_recorded_by_the_service_in_its_place_in_the_chain(world):
    """What the recorder writes goes through services.record_chunk, the one writer of chunk rows."""
    session = running_session(world)
    recorder = recording.Recorder(session.pk)
    recorder.frame("o", b"first\r\n")
    recorder.flush()
    data = b'[0.5, "o", "second"]\n'
    digest = hashlib.sha256(data).hexdigest()
    name = recording.blobs.content_name(recording.FOLDER, digest, "castpart")
    recording.blobs.put(name, data, digest, action=recording.ACTION)
    chain = recording.link(recorder.chain, digest)
    row = services.record_chunk(session.pk, 1, recorder.offset, len(data), digest, chain, name)
    assert [c["index"] for c in recording.verify_chunks(session.pk)] == [0, 1] and row.chain == chain


def test_a_recording_still_unsealed_when_the_retry_stops_is_reported_once(world):
    """A day after its end the sweep stops trying to seal a session's recording; one still unsealed
    then (its chunks there, none sealed) is said in the history once, not each minute after."""
    session = running_session(world)
    recorder = recording.Recorder(session.pk)
    recorder.frame("o", b"kept\r\n")
    recorder.flush()
    services.end_session(world["tech"].user, session)
    session.refresh_from_db()
    assert services.report_unsealed(session.ended_at + timedelta(hours=23)) == 0  # still being retried
    later = session.ended_at + services.SEAL_RETRY + timedelta(minutes=1)
    assert services.report_unsealed(later) == 1
    assert services.report_unsealed(later + timedelta(minutes=1)) == 0
    (told,) = HistoryEvent.objects.filter(action="session.recording_unsealed", subject_id=str(session.pk))
    assert told.payload["chunks"] == 1 and told.payload["provider"] == "terminal" and told.site_id == session.site_id


def test_unknown_credentials_on_the_relay_count_against_the_agent_tiers_limit(world, settings):
    """Guessing credentials over the websocket is limited like over HTTP: past the limit, the
    address is refused before any credential is looked up, until the window ends."""
    settings.RMM_AGENT_REFUSAL_WINDOW_SECONDS = 60
    settings.RMM_AGENT_REFUSALS_PER_WINDOW = 3
    session = running_session(world)
    guess = world["auth"].rsplit(":", 1)[0] + ":guess"

    async def scenario():
        codes = []
        for auth in [guess, guess, guess, guess]:
            codes.append((await agent_side(session.pk, auth).connect())[1])
        return codes

    assert async_to_sync(scenario)() == [4401, 4401, 4401, 4429]


def test_a_process_relays_frames_of_more_than_a_hundred_sessions_at_once_through_redis():
    """Every relay of a daphne process may send a frame at the same moment: with Redis's channel
    layer as configured (settings.CHANNEL_LAYERS), 150 sessions' frames sent at once all arrive.
    Before, redis-py 8's default pool (100 connections) refused the 101st ("Too many connections"),
    cutting its relay with 1011, and channels_redis's default capacity (100 messages waiting for a
    process) dropped the rest silently (docs/performance.md, Remote sessions)."""
    config = django_settings.CHANNEL_LAYERS["default"]
    if "Redis" not in config["BACKEND"]:
        pytest.skip("the in-memory channel layer (REDIS_URL unset) has no connections to run out of")
    sessions = 150

    async def scenario():
        layer = import_string(config["BACKEND"])(**config["CONFIG"], prefix=f"test-{time.time_ns()}")
        channels = [await layer.new_channel() for _ in range(sessions)]
        for n, channel in enumerate(channels):
            await layer.group_add(f"remote-session-{n}", channel)
        frames = [{"type": "relay.input", "data": b"%d" % n} for n in range(sessions)]
        await asyncio.gather(*(layer.group_send(f"remote-session-{n}", frames[n]) for n in range(sessions)))
        received = [await asyncio.wait_for(layer.receive(channel), 10) for channel in channels]
        await layer.flush()
        return [message["data"] for message in received]

    assert async_to_sync(scenario)() == [b"%d" % n for n in range(sessions)]
