"""Live console events over the real websocket, and the site boundary around them (law 7).

A console user's websocket joins only the groups of the sites it may see: it hears every
change of a job on its own site and nothing of another site's jobs, while a user granted
every site hears both, so the silence is the boundary and not a lost event. Anonymous
callers and foreign origins get no websocket; the pages themselves keep the same boundary.
"""

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.e2e.flows import Session, agent_once, console_users, make_world, publish, run_job, staff

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def two_sites(server):
    staff(server)
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: make_world(server), range(2))
    tag = uuid.uuid4().hex[:6]
    names = {"a": f"tech-a-{tag}", "b": f"tech-b-{tag}", "all": f"tech-all-{tag}"}
    console_users(
        server,
        {
            names["a"]: ("technician", [a["site"]]),
            names["b"]: ("technician", [b["site"]]),
            names["all"]: ("technician", []),
        },
        PASSWORD,
    )
    return a, b, names


def ws_url(server) -> str:
    return server.url.replace("http://", "ws://") + "/ws/console/"


def open_ws(server, session=None, origin=None):
    headers = {"Cookie": session.cookie_header} if session else {}
    return connect(ws_url(server), additional_headers=headers, origin=origin or server.url, open_timeout=5)


def events_until(ws, done, timeout=10.0, settle=0.5) -> list[dict]:
    """Collect events until ``done(event)`` holds, then whatever else arrives within ``settle`` seconds."""
    events, deadline = [], time.monotonic() + timeout
    while not any(done(e) for e in events):
        remaining = deadline - time.monotonic()
        try:
            events.append(json.loads(ws.recv(timeout=max(remaining, 0))))
        except TimeoutError:
            raise AssertionError(f"the awaited event never came; got {events}") from None
    deadline = time.monotonic() + settle
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            events.append(json.loads(ws.recv(timeout=remaining)))
        except TimeoutError:
            break
    return events


def test_a_user_hears_its_own_sites_jobs_and_nothing_of_others(server, two_sites):
    a, b, names = two_sites
    only_a = Session(server).login(names["a"], PASSWORD)
    every = Session(server).login(names["all"], PASSWORD)
    with open_ws(server, only_a) as ws_a, open_ws(server, every) as ws_all:
        script = publish(server, a, "echo live\n")
        job_b = run_job(server, b, script["id"])
        agent_once(server, b)
        job_a = run_job(server, a, script["id"])
        agent_once(server, a)

        def final(job):
            return lambda e: e.get("id") == job["id"] and e.get("status") == "succeeded"

        heard_all = events_until(ws_all, final(job_a))
        heard_a = events_until(ws_a, final(job_a))

    def statuses(events, job):
        return [e["status"] for e in events if e.get("type") == "job" and e["id"] == job["id"]]

    # The control: both jobs' changes were published, in order, to a user who sees both sites.
    assert statuses(heard_all, job_b) == ["queued", "running", "succeeded"]
    assert statuses(heard_all, job_a) == ["queued", "running", "succeeded"]
    # The site-A user heard site A's job live, and not one event of site B or of any other site.
    assert statuses(heard_a, job_a) == ["queued", "running", "succeeded"]
    site_a = next(e["site"] for e in heard_a if e.get("id") == job_a["id"])
    site_b = next(e["site"] for e in heard_all if e.get("id") == job_b["id"])
    assert site_a != site_b
    assert [e for e in heard_a if "site" in e and e["site"] != site_a] == []
    assert [e for e in heard_a if e.get("id") == job_b["id"]] == []
    succeeded = next(e for e in heard_a if final(job_a)(e))
    assert succeeded["type"] == "job" and succeeded["kind"] == "script"
    assert succeeded["started_at"] and succeeded["completed_at"]


def test_anonymous_websocket_is_refused(server):
    with pytest.raises(InvalidStatus) as refused:
        open_ws(server)
    assert refused.value.response.status_code == 403


def test_websocket_from_a_foreign_origin_is_refused(server, two_sites):
    _a, _b, names = two_sites
    session = Session(server).login(names["a"], PASSWORD)
    with pytest.raises(InvalidStatus) as refused:
        open_ws(server, session, origin="http://evil.example")
    assert refused.value.response.status_code == 403


def test_pages_keep_the_site_boundary(server, two_sites):
    a, b, names = two_sites
    script = publish(server, a, "echo pages\n")
    job_a, job_b = run_job(server, a, script["id"]), run_job(server, b, script["id"])
    only_b = Session(server).login(names["b"], PASSWORD)

    status, _url, _body = only_b.open(f"/console/jobs/script/{job_a['id']}/")
    assert status == 404
    status, _url, _body = only_b.open(f"/console/jobs/script/{job_a['id']}/fragment/")
    assert status == 404
    status, _url, body = only_b.open("/console/jobs/")
    assert status == 200
    assert job_a["id"] not in body
    assert f'data-job-id="{job_b["id"]}"' in body
    status, _url, body = only_b.open(f"/console/jobs/script/{job_b['id']}/")
    assert status == 200 and 'id="job-status"' in body
