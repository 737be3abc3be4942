"""Four eyes under concurrency (Law 8): two approvers acting at the same moment through two
server processes: exactly one decision stands, the other gets 409."""

import threading
import uuid

import pytest

from tests.e2e.flows import make_world, run_job, staff, tokens


@pytest.fixture(scope="module")
def world(server):
    return make_world(server)


def race(server, calls):
    """Fire ``calls`` ((base, method, path, data, token) tuples) at once; their answers in order."""
    barrier = threading.Barrier(len(calls))
    answers = [None] * len(calls)

    def fire(i, base, method, path, data, token):
        barrier.wait()
        answers[i] = server.request(method, path, data, token, base=base)

    threads = [threading.Thread(target=fire, args=(i, *call)) for i, call in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return answers


@pytest.mark.parametrize("decisions", [("approve", "approve"), ("approve", "reject")])
def test_two_approvers_at_once_one_decision_stands(server, world, decisions):
    second = server.second_worker()
    other = tokens(server, {f"approver2-{uuid.uuid4().hex[:6]}": "approver"})[0]
    people = staff(server)
    for _round in range(3):
        r = server.request(
            "POST",
            "/api/v1/scripts/",
            {"name": f"race-{uuid.uuid4().hex[:6]}", "language": "sh", "content": "true\n", "requires_approval": True},
            people["tech"],
        )
        script = r.json()
        calls = [
            (base, "POST", f"/api/v1/scripts/{script['id']}/{decision}/", {"reason": "no"}, token)
            for base, decision, token in zip((server.url, second), decisions, (people["approver"], other), strict=True)
        ]
        codes = sorted(answer.status for answer in race(server, calls))
        assert codes == [200, 409], codes
        final = server.request("GET", f"/api/v1/scripts/{script['id']}/", token=people["tech"]).json()
        assert final["approval_status"] in {"approved", "rejected"}

    # And for a job that needs approval: one approval queues exactly one instruction.
    server.request("POST", f"/api/v1/scripts/{script['id']}/approve/", token=people["approver"])
    if final["approval_status"] != "approved":
        return
    job = run_job(server, world, script["id"])
    assert job["status"] == "awaiting_approval"
    calls = [
        (base, "POST", f"/api/v1/script-jobs/{job['id']}/approve/", None, token)
        for base, token in ((server.url, people["approver"]), (second, other))
    ]
    codes = sorted(answer.status for answer in race(server, calls))
    assert codes == [200, 409], codes
    with server.db() as conn:
        marker = "%s" if server.pg_admin_url else "?"
        key = job["id"] if server.pg_admin_url else job["id"].replace("-", "")
        count = conn.execute(f"SELECT COUNT(*) FROM engine_instruction WHERE job_id = {marker}", (key,)).fetchone()[0]
    assert count == 1
