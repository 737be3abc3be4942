"""The outbox against a real server, task cluster and receiver (issue 13, part 7): a receiver that
fails its first calls and then goes away while the task cluster is killed and started again still
gets every event, each under its id with the same body on a repeat, each signature verifying with
the Standard Webhooks library."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.e2e.flows import agent_once, make_world, publish, run_job, wait_for
from tests.e2e.psa import PsaReceiver
from tests.e2e.server import Server


@pytest.fixture(scope="module")
def receiver():
    psa = PsaReceiver()
    yield psa
    psa.close()


@pytest.fixture(scope="module")
def outbox_server(tmp_path_factory, receiver):
    server = Server(
        tmp_path_factory.mktemp("outbox"),
        {
            "RMM_PSA_WEBHOOK_URL": receiver.url,
            "RMM_PSA_WEBHOOK_SECRET": receiver.secret,
            "RMM_WEBHOOK_RETRY_BASE_SECONDS": "1",
        },
    ).start()
    yield server
    server.stop()


def deliveries(server) -> list[dict]:
    lines = server.manage("rmm_outbox", "list", "--limit", "1000").stdout.splitlines()
    keys = ("id", "status", "type", "message_id", "endpoint")
    return [dict(zip(keys, line.split("\t")[:5], strict=True)) for line in lines]


def test_every_event_arrives_across_a_failing_receiver_and_a_restarted_cluster(outbox_server, receiver):
    server, started = outbox_server, time.monotonic()
    w = make_world(server)
    script = publish(server, w, "echo told\n")
    receiver.fail_next = 2
    jobs = []
    for _ in range(3):
        jobs.append(run_job(server, w, script["id"])["id"])
        agent_once(server, w)
    wait_for(lambda: len(receiver.refused) == 2, 30, "the receiver's first two calls")

    # The receiver goes away and the task cluster dies; both come back.
    receiver.stop()
    os.killpg(server.cluster.pid, signal.SIGKILL)
    server.cluster.wait(10)
    time.sleep(2)
    receiver.start()
    server.start_cluster()

    # The minute's sweep sends what is due again.
    def all_delivered():
        # the agent, run once per job, also goes offline meanwhile (agent.offline): not counted here
        rows = [row for row in deliveries(server) if row["type"] in ("job.finished", "case.may_close")]
        return rows if len(rows) == 6 and all(row["status"] == "delivered" for row in rows) else None

    rows = wait_for(all_delivered, 150, "every delivery delivered", every=2)
    print(f"\nevery event delivered {time.monotonic() - started:.0f} s after the jobs were requested")
    told = [item for item in receiver.received if item["body"]["event"] in ("job.finished", "case.may_close")]
    # Delivery is at least once: a cluster killed between the receiver's 200 and the row's
    # "delivered" sends that message again. A repeat carries the same id and the same bytes,
    # so a receiver de-duplicating by id sees each event once.
    received = {}
    for item in told:
        assert received.setdefault(item["id"], item)["raw"] == item["raw"], "a repeat changed its bytes"
    finished = [item["body"] for item in received.values() if item["body"]["event"] == "job.finished"]
    assert sorted(body["job_id"] for body in finished) == sorted(jobs)
    # Each job was the case's last unfinished one when it ended: the case may close, three times.
    closable = [item["body"] for item in received.values() if item["body"]["event"] == "case.may_close"]
    assert sorted(body["jobs_total"] for body in closable) == [1, 2, 3]
    assert all(item["signed"] for item in receiver.received)
    assert set(received) == {row["message_id"] for row in rows}
    assert {item["id"] for item in receiver.refused} <= {row["message_id"] for row in deliveries(server)}

    # A replay is a repeat: the same id and the same bytes.
    replayed = rows[0]
    copies_before = sum(item["id"] == replayed["message_id"] for item in receiver.received)
    assert server.manage("rmm_outbox", "replay", replayed["id"]).returncode == 0
    wait_for(
        lambda: sum(item["id"] == replayed["message_id"] for item in receiver.received) == copies_before + 1,
        30,
        "the repeat",
    )
    copies = {item["raw"] for item in receiver.received if item["id"] == replayed["message_id"]}
    assert len(copies) == 1
    assert server.manage("verify_history").returncode == 0
