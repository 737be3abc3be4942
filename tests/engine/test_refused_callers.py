"""Unauthenticated callers of the agent protocol: their refusals are recorded once per window and
counted, past a limit they are answered 429 from the cache alone, their credential is checked
before their body is read, and an oversized body gets the protocol's JSON 413 (rmm/asgi.py)."""

import asyncio
import contextlib
import json
import os
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone

from rmm.engine import services as engine
from rmm.history.models import HistoryEvent
from rmm.history.services import verify_chain
from rmm.inventory import services as inventory
from rmm_agent.protocol import MAX_BODY_BYTES
from tests.helpers import make_agent

ATTACKER = "203.0.113.7"


@pytest.fixture
def limits(settings, db):
    settings.RMM_AGENT_REFUSAL_WINDOW_SECONDS = 60
    settings.RMM_AGENT_REFUSALS_PER_WINDOW = 5
    settings.RMM_HEARTBEAT_INTERVAL = 30
    return settings


def call(
    path="/api/v1/agent/heartbeat/",
    body=b"{}",
    auth="",
    address=ATTACKER,
    chunks=None,
    length=True,
    withheld=None,
):
    """One call through the agent protocol's ASGI handler, as a server drives it. ``chunks``: the
    body sent in these pieces (``more_body``); ``withheld``: the body is only handed over once the
    answer has started, or after this many seconds. Returns (status, headers, body, pieces the
    handler asked for before it answered)."""
    from rmm.asgi import agent_asgi_app

    pieces = list(chunks) if chunks is not None else [body]
    total = sum(len(p) for p in pieces)
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")]
    if auth:
        headers.append((b"authorization", auth.encode()))
    if length:
        headers.append((b"content-length", str(total).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": (address, 40000),
        "server": ("127.0.0.1", 8000),
    }
    sent, state = [], {"given": 0, "before_answer": None}

    async def scenario():
        answered = asyncio.Event()

        async def receive():
            if state["given"] < len(pieces):
                if withheld is not None and state["given"] == 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(answered.wait(), withheld)
                if not answered.is_set():
                    index = state["given"]
                    state["given"] += 1
                    return {"type": "http.request", "body": pieces[index], "more_body": index < len(pieces) - 1}
            await answered.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.start":
                state["before_answer"] = state["given"]
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                answered.set()

        await agent_asgi_app.handle(scope, receive, send)

    async_to_sync(scenario)()
    start = sent[0]
    headers = {key.decode().lower(): value.decode() for key, value in start["headers"]}
    content = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], headers, content, state["before_answer"]


def events(action, **filters):
    return HistoryEvent.objects.filter(action=action, **filters).order_by("sequence")


def bad_auth(agent_id="00000000-0000-0000-0000-000000000000"):
    return f"Agent {agent_id}:wrong"


def test_refusals_are_recorded_once_per_window_and_counted_when_it_closes(limits):
    limits.RMM_AGENT_REFUSALS_PER_WINDOW = 100
    for _ in range(4):
        assert call(auth=bad_auth())[0] == 401
    first = events("refused.agent.call").get()
    assert first.actor == "anonymous" and first.payload["address"] == ATTACKER
    assert first.payload["reason"] == "unknown, revoked or wrong agent credential"

    # Another address is a source of its own; so is another kind of refusal from the same address.
    assert call(auth=bad_auth(), address="198.51.100.1")[0] == 401
    for _ in range(2):
        enroll = json.dumps({"token": "nope", "facts": {"hostname": "x"}}).encode()
        status, _, body, _ = call("/api/v1/agent/enroll/", enroll)
        assert status == 403
    assert events("refused.agent.call").count() == 2
    assert events("refused.agent.enroll").count() == 1
    assert not HistoryEvent.objects.filter(action__endswith=".repeated").exists()

    # The engine's sweep closes the windows that ended: one event each, with the count.
    engine.sweep(timezone.now() + timedelta(seconds=61))
    closed = events("refused.agent.call.repeated").get()
    assert closed.actor == "anonymous"
    assert closed.payload["address"] == ATTACKER and closed.payload["refusals"] == 4
    assert closed.payload["not_recorded"] == 3
    enroll_closed = events("refused.agent.enroll.repeated").get()
    assert enroll_closed.payload["refusals"] == 2 and enroll_closed.payload["address"] == ATTACKER
    # A window with only its first refusal closes without an event: there is nothing more to say.
    assert not events("refused.agent.call.repeated", payload__address="198.51.100.1").exists()

    # The next refusal opens a new window, recorded at once.
    assert call(auth=bad_auth())[0] == 401
    assert events("refused.agent.call", payload__address=ATTACKER).count() == 2
    engine.sweep(timezone.now() + timedelta(seconds=61))
    assert events("refused.agent.call.repeated").count() == 1  # that window had one refusal
    assert verify_chain().ok


def test_a_refusal_after_the_window_ended_closes_it_without_the_sweep(limits):
    for _ in range(3):
        call(auth=bad_auth())
    limits.RMM_AGENT_REFUSAL_WINDOW_SECONDS = 0.5
    async_to_sync(asyncio.sleep)(0.6)
    assert call(auth=bad_auth())[0] == 401
    closed = events("refused.agent.call.repeated").get()
    assert closed.payload["refusals"] == 3
    assert events("refused.agent.call").count() == 2
    assert events("refused.agent.call").last().sequence > closed.sequence


def test_past_the_limit_unknown_callers_get_429_without_touching_the_database(limits, django_assert_num_queries):
    for _ in range(5):
        assert call(auth=bad_auth())[0] == 401
    with django_assert_num_queries(0):
        status, headers, body, _ = call(auth=bad_auth())
        enroll = call("/api/v1/agent/enroll/", b'{"token": "nope"}')
        bare = call()
    assert status == 429 and enroll[0] == 429 and bare[0] == 429
    assert headers["content-type"] == "application/json"
    assert 1 <= int(headers["retry-after"]) <= 60
    assert "too many" in json.loads(body)["detail"].lower()
    assert events("refused.agent.call").count() == 1
    # Another address is not limited.
    assert call(auth=bad_auth(), address="198.51.100.1")[0] == 401


def test_an_authenticated_agent_is_never_limited(limits, site):
    row, auth = make_agent(site, "behind-the-same-nat")
    assert call(auth=auth)[0] == 200
    for _ in range(8):
        call(auth=bad_auth())
    assert call(auth=bad_auth())[0] == 429
    for _ in range(3):
        status, _, body, _ = call(auth=auth, body=json.dumps({"capacity": 1}).encode())
        assert status == 200, body
        assert "instructions" in json.loads(body)


def test_an_agent_any_worker_served_lately_passes_the_limit(limits, site):
    """Accepted credentials are shared through the cache: a worker that has not seen the agent
    yet lets it through too. One never accepted is limited like any unknown caller (its
    Retry-After is at most one window)."""
    from rmm.engine import agent_limits

    _, known = make_agent(site, "known")
    assert call(auth=known)[0] == 200
    _, newcomer = make_agent(site, "newcomer")
    for _ in range(8):
        call(auth=bad_auth())
    agent_limits._trusted_here.clear()  # as in another worker
    status, _, body, _ = call(auth=known)
    assert status == 200, body
    assert call(auth=newcomer)[0] == 429


def test_the_credential_is_checked_before_the_body_is_read(limits, site):
    status, headers, body, pieces = call(auth=bad_auth(), body=b'{"capacity": 1}', withheld=5)
    assert status == 401 and pieces == 0
    assert headers["www-authenticate"] == "Agent"
    assert json.loads(body) == {"detail": "Agent credential missing, wrong or revoked."}
    status, _, _, pieces = call("/api/v1/agent/results/", auth=bad_auth(), body=b"{}", withheld=5)
    assert status == 401 and pieces == 0
    # A good credential's body is read as before.
    _, auth = make_agent(site, "reader")
    assert call(auth=auth, body=b'{"capacity": 1}')[0] == 200


def test_an_agent_revoked_after_its_last_call_is_refused(limits, site, caller):
    row, auth = make_agent(site, "soon-revoked")
    assert call(auth=auth)[0] == 200  # accepted: its next calls skip the early check
    inventory.revoke_agent(caller("admin", "admin").user, row, "stolen")
    status, headers, body, _ = call(auth=auth, body=b'{"capacity": 1}')
    assert status == 401 and headers["www-authenticate"] == "Agent"
    assert events("refused.agent.call").get().payload["agent_id"] == str(row.pk)


def test_a_revoked_credential_is_no_longer_trusted_past_the_limit(limits, site, caller):
    """A stolen credential whose agent is revoked must not keep skipping the limit for the rest
    of its trusted hour: once refused, it is limited like any unknown caller's."""
    row, auth = make_agent(site, "stolen-then-revoked")
    assert call(auth=auth)[0] == 200
    inventory.revoke_agent(caller("admin", "admin").user, row, "stolen")
    answers = [call(auth=auth, body=b'{"capacity": 1}')[0] for _ in range(limits.RMM_AGENT_REFUSALS_PER_WINDOW + 2)]
    assert answers[0] == 401 and answers[-1] == 429, answers


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "chunked"])
def test_an_oversized_body_gets_the_json_413_and_is_not_read_past_the_bound(limits, site, length):
    _, auth = make_agent(site, "big")
    piece = b" " * (1024 * 1024)
    chunks = [piece] * 8  # 8 MiB, past the 5 MiB bound
    status, headers, body, pieces = call("/api/v1/agent/results/", auth=auth, chunks=chunks, length=length)
    assert status == 413
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["max_bytes"] == MAX_BODY_BYTES
    assert pieces <= (0 if length else MAX_BODY_BYTES // len(piece) + 1)
    # The same for enrollment, which has no credential.
    status, headers, body, pieces = call("/api/v1/agent/enroll/", chunks=chunks, length=length)
    assert status == 413 and json.loads(body)["max_bytes"] == MAX_BODY_BYTES
    assert pieces <= (0 if length else MAX_BODY_BYTES // len(piece) + 1)


def test_sign_in_lockouts_are_counted_per_address_too(limits, caller):
    from django.test import Client

    user = caller("boss", "technician").user
    user.set_password("a long pass phrase")
    user.save()
    client = Client(REMOTE_ADDR=ATTACKER)
    for _ in range(8):
        client.post("/accounts/login/", {"username": "boss", "password": "wrong"})
    locked = events("refused.signin.locked_out").get()
    assert locked.payload["reason"] == "5 failed sign-ins: locked out for 60 minutes"
    assert locked.payload["address"] == ATTACKER
    engine.sweep(timezone.now() + timedelta(seconds=61))
    closed = events("refused.signin.locked_out.repeated").get()
    assert closed.payload["refusals"] == 4 and closed.payload["address"] == ATTACKER


def test_enrollment_refusal_reaches_the_history_with_its_address(limits, site):
    status, _, _, _ = call("/api/v1/agent/enroll/", json.dumps({"token": "nope", "facts": {"hostname": "h"}}).encode())
    assert status == 403
    refusal = events("refused.agent.enroll").get()
    assert refusal.payload["address"] == ATTACKER and refusal.payload["reason"] == "unknown enrollment token"


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="counts Redis's clients: the CI leg on Redis runs it")
def test_calls_from_many_requests_share_one_redis_connection_pool(limits):
    """Each call runs in a request context of its own; the limit's cache must not open a Redis
    connection pool per context (the agent handler sends no request_finished to close one)."""
    import threading

    import redis
    from django.conf import settings

    from rmm.engine import agent_limits, agent_views

    server = redis.Redis.from_url(settings.REDIS_URL)

    async def calls(count):
        """As a server's event loop runs them: each request a task (a context) of its own."""

        async def one(n):
            await agent_views.run_sync(agent_limits.retry_after, f"198.51.100.{n}", "Agent x:y")

        await asyncio.gather(*(asyncio.create_task(one(n)) for n in range(count)))

    def serve(count):
        loop = threading.Thread(target=asyncio.run, args=(calls(count),))
        loop.start()
        loop.join(30)

    serve(5)  # the process's pool exists from here
    before = server.info("clients")["connected_clients"]
    serve(200)
    assert server.info("clients")["connected_clients"] - before <= 10


def test_while_the_database_is_down_an_agent_call_gets_503_without_a_query(limits, site, django_assert_num_queries):
    """The handler's early credential check must not reach for a database known to be down (or
    answer 500 when it fails): the agent gets the fail-fast 503 with Retry-After."""
    from rmm.core import dependencies

    _, auth = make_agent(site, "during-the-outage")
    agent_limits_forget(auth)
    dependencies.mark_down(dependencies.DATABASE, "OperationalError: connection refused")
    try:
        with django_assert_num_queries(0):
            status, headers, body, _ = call(auth=auth, body=b'{"capacity": 1}', address="192.0.2.50")
    finally:
        dependencies.mark_up(dependencies.DATABASE)
    assert status == 503 and headers["retry-after"] and json.loads(body)["dependency"] == "database"


def agent_limits_forget(auth: str) -> None:
    """As in a process that has not accepted this credential yet (a restarted worker)."""
    from rmm.engine import agent_limits

    agent_limits.distrust(auth)


def test_callers_of_one_ipv6_64_are_one_source(limits):
    """A host given a /64 cannot spread its refusals over fresh addresses: one window in the
    history and one limit for the whole network."""
    answers = [call(auth=bad_auth(), address=f"2001:db8:5:7::{n:x}")[0] for n in range(1, 9)]
    assert answers[:5] == [401] * 5 and answers[-1] == 429, answers
    assert events("refused.agent.call").count() == 1
    assert call(auth=bad_auth(), address="2001:db8:5:8::1")[0] == 401  # the next /64 is another source
