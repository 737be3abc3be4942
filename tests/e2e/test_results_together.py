"""Results posted at once to an agent-tier worker are taken in together (rmm/engine/intake.py):
each call answered for its own result, every job ended with its evidence, and results of one
transaction appended to the history together (one append stamps its events with one time)."""

import json
import threading
import uuid
from collections import Counter

from rmm_agent.results import make_result
from tests.e2e.flows import make_world, publish

AGENTS = 24


def _agents(server, site: str) -> list[tuple[str, str]]:
    """``AGENTS`` agents enrolled on ``site`` in one process: [(asset id, Authorization header)]."""
    lines = [
        "from rmm.inventory import services as s",
        "from rmm.inventory.models import Site",
        f"site = Site.objects.get(name={site!r})",
        f"_, secret = s.create_enrollment_token(site, max_uses={AGENTS})",
        f"for n in range({AGENTS}):",
        "    facts = {'hostname': f'together-{n}', 'os': 'Linux', 'architecture': 'x86_64'}",
        "    agent, key = s.enroll_agent(secret, facts)",
        "    print(agent.asset_id, f'Agent {agent.pk}:{key}')",
    ]
    out = server.manage("shell", "--verbosity", "0", "-c", "\n".join(lines)).stdout.split("\n")
    return [tuple(line.split(" ", 1)) for line in out if line.strip()]


def test_results_posted_at_once_are_taken_in_together(server):
    tier = server.second_worker("uvicorn")
    w = make_world(server)
    agents = _agents(server, w["site"])
    script = publish(server, w, f"echo {uuid.uuid4().hex}\n")
    r = server.request(
        "POST",
        "/api/v1/script-jobs/batch/",
        {"script": script["id"], "assets": [asset for asset, _ in agents], "psa_task_id": w["task"]},
        w["psa"],
    )
    assert r.status == 201, r.body
    bodies = []
    for _, auth in agents:
        answer = server.request("POST", "/api/v1/agent/heartbeat/", {"capacity": 1}, token=auth, base=tier).json()
        [payload] = [json.loads(item["payload"]) for item in answer["instructions"]]
        bodies.append((auth, make_result(payload["instruction_id"], "completed", exit_code=0, stdout="done\n")))

    answers: list = [None] * len(bodies)
    go = threading.Barrier(len(bodies))

    def post(n: int) -> None:
        auth, body = bodies[n]
        go.wait()
        answers[n] = server.request("POST", "/api/v1/agent/results/", body, token=auth, base=tier).status

    threads = [threading.Thread(target=post, args=(n,)) for n in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [201] * len(bodies)

    jobs = server.request("GET", f"/api/v1/jobs/?batch={r.json()['batch']}", token=w["psa"]).json()["results"]
    assert Counter(job["status"] for job in jobs) == {"succeeded": AGENTS}
    ids = [body["instruction_id"] for _, body in bodies]
    lines = [
        "from collections import Counter",
        "from evidence.models import RmmEvidence",
        "from rmm.history.models import HistoryEvent",
        f"events = HistoryEvent.objects.filter(action='instruction.result', subject_id__in={ids!r})",
        "print(max(Counter(events.values_list('created_at', flat=True)).values()), events.count())",
        f"print(RmmEvidence.objects.filter(related_id__in={[job['id'] for job in jobs]!r}).count())",
    ]
    together, appended, evidence = map(
        int, server.manage("shell", "--verbosity", "0", "-c", "\n".join(lines)).stdout.split()
    )
    assert appended == evidence == AGENTS
    assert together >= 2  # at least two results shared a transaction
    verified = server.manage("verify_history", check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
