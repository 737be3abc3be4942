"""Agents served by uvicorn workers (the agent tier of docs/performance.md and the README's
production section) while people and the PSA use the daphne worker: the same application."""

import json
import socket
import uuid

from tests.e2e.flows import agent_once, make_world, publish, run_job


def test_an_agent_served_by_a_uvicorn_worker_runs_a_job_end_to_end(server):
    tier = server.second_worker("uvicorn")
    w = make_world(server)
    config_path = w["state"] / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(dict(config, server=tier)))
    script = publish(server, w, "echo from the agent tier\n")
    job = run_job(server, w, script["id"])

    agent_once(server, w)

    job = server.request("GET", f"/api/v1/script-jobs/{job['id']}/", token=w["psa"]).json()
    assert job["status"] == "succeeded", job
    assert job["result"]["stdout"] == "from the agent tier\n"
    assert len(job["evidence"]) == 1
    held = server.request(
        "POST",
        "/api/v1/agent/heartbeat/",
        {"capacity": 1, "wait": 1},
        token=f"Agent {config['agent_id']}:{config['secret']}",
        base=tier,
    )
    assert (held.status, held.json()["instructions"]) == (200, [])


def _raw_post(url: str, path: str, headers: dict, first: bytes, rest: bytes = b"", chunked: bool = False) -> tuple:
    """A POST on a socket of its own: the headers and ``first`` of the body, then the answer is
    read before ``rest`` is sent (a server that wants the rest first never answers: timeout).
    Returns (status, headers, body)."""
    host, port = url.removeprefix("http://").split(":")
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json", "Connection: close"]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        piece = 256 * 1024
        for start in range(0, len(first), piece):
            data = first[start : start + piece]
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            except OSError:  # the server answered and closed: read what it said
                break
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer) < _expected_length(answer):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    found = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), found, body


def _expected_length(answer: bytes) -> int:
    head, sep, _ = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(head) + len(sep) + int(line.split(b":")[1])
    return len(answer) + 1


def test_the_agent_tier_refuses_unknown_callers_early_and_limits_them(server):
    """Against a real uvicorn worker with a low refusal limit: a wrong credential is answered
    before its body is sent, an oversized body gets the protocol's JSON 413 by its length and
    chunked, and past the limit unknown callers get 429 while the enrolled agent is served."""
    tier = server.second_worker("uvicorn", {"RMM_AGENT_REFUSALS_PER_WINDOW": "3"})
    w = make_world(server)
    config = json.loads((w["state"] / "config.json").read_text())
    good = f"Agent {config['agent_id']}:{config['secret']}"
    assert server.request("POST", "/api/v1/agent/heartbeat/", {"capacity": 1}, token=good, base=tier).status == 200

    big = b" " * (6 * 1024 * 1024)
    for chunked in (False, True):
        headers = {"Authorization": good} if chunked else {"Authorization": good, "Content-Length": str(len(big))}
        status, found, body = _raw_post(
            tier,
            "/api/v1/agent/results/",
            headers,
            big[: 5 * 1024 * 1024 + 256 * 1024] if chunked else b"",
            chunked=chunked,
        )
        assert status == 413 and found["content-type"] == "application/json", body
        assert json.loads(body)["max_bytes"] == 5 * 1024 * 1024

    bogus = f"Agent {uuid.uuid4()}:wrong"
    status, _, body = _raw_post(
        tier, "/api/v1/agent/results/", {"Authorization": bogus, "Content-Length": str(len(big))}, b"{"
    )  # only the first byte of 6 MiB is sent: answered without the rest
    assert status == 401 and json.loads(body)["detail"] == "Agent credential missing, wrong or revoked."

    statuses = []
    for _ in range(4):
        r = server.request("POST", "/api/v1/agent/heartbeat/", {}, token=bogus, base=tier)
        statuses.append(r.status)
        if r.status == 429:
            break
    assert statuses[-1] == 429, statuses
    assert 1 <= int(r.headers["Retry-After"]) <= 60 and "Too many" in r.json()["detail"]
    assert server.request("POST", "/api/v1/agent/enroll/", {"token": "x"}, base=tier).status == 429
    served = server.request("POST", "/api/v1/agent/heartbeat/", {"capacity": 1}, token=good, base=tier)
    assert served.status == 200, served.body

    recorded = server.manage(
        "shell",
        "--verbosity",
        "0",
        "-c",
        "from rmm.history.models import HistoryEvent\n"
        f"print(HistoryEvent.objects.filter(action='refused.agent.call', payload__agent_id='{bogus[6:42]}').count())",
    ).stdout
    assert int(recorded) <= 1  # the first of the window at most, the others counted
