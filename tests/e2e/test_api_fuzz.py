"""The REST API answers as its OpenAPI schema says, for every operation: schema-driven fuzzing.

A real server on a free port with a seeded world (a site, an asset with an enrolled agent, PSA
authority, scripts, jobs, evidence, a legal hold, a kill switch, an export). For each of the
roles psa, technician and admin, the schemathesis CLI sends every operation of the schema the
server serves generated requests, valid and invalid (its coverage phase, then EXAMPLES from its
fuzzing phase), whose path parameters and id fields are sometimes the seeded objects' and
sometimes random (tests/e2e/fuzz_hooks.py). Every answer is checked: no 5xx, its status code
and content type documented for the operation, its body and headers as the schema describes
(tests/e2e/api_fuzz.toml). No operation is left out: the test fails unless each one got at least
EXAMPLES requests (one that takes no input at all is the same request every time, and gets the
coverage phase's).

Reproducible: generation is deterministic (the same requests every run) and nothing is carried
over between runs. A failure prints schemathesis's report, which names the role, the operation,
the check that failed and a curl command that repeats the request.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e.flows import (
    agent_once,
    assign_profile,
    make_world,
    privileged_approver,
    publish,
    run_job,
    tokens,
    upload_package,
    wait_for,
)
from tests.e2e.server import ROOT, Server
from tests.patching import documents

ROLES = ("psa", "technician", "admin")
CONFIG = Path(__file__).with_name("api_fuzz.toml")  # checks, phases, examples, determinism
EXAMPLES = tomllib.loads(CONFIG.read_text())["generation"]["max-examples"]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    """A server of its own: the fuzzing changes a lot (switches engaged, agents revoked, holds placed)."""
    # Without Redis (the ORM broker, on its own database): its task cluster must not take the tasks
    # of the run's other servers from the one Redis queue, nor they its.
    # Webhooks the fuzzing makes point at 127.0.0.1 (allowed here) and are refused at once there.
    # Containment jobs the fuzzing asks for are never run: no agent runs after the seeding.
    env = {"REDIS_URL": "", "RMM_WEBHOOK_ALLOW_PRIVATE": "1", "RMM_CONTAINMENT_SERVER": "127.0.0.1:9"}
    server = Server(tmp_path_factory.mktemp("fuzz"), env).start()
    try:
        yield server, seed_world(server)
    finally:
        server.stop()


def seed_profiles(server, w) -> tuple[list[str], str]:
    """The built-in config keys (loaded by an admin), one of them approved with its scripts by an
    approver who may approve privileged scripts (its set script is), and a profile that uses it:
    the keys' ids, usable one first, and the profile's id."""
    [boss] = tokens(server, {"fuzz-boss": "approver"})
    privileged = "Permission.objects.get(codename='approve_privileged')"
    grant = f"User.objects.get(username='fuzz-boss').user_permissions.add({privileged})"
    server.manage("shell", "-c", f"from django.contrib.auth.models import Permission, User; {grant}")
    server.manage("rmm_config_keys_builtin", "--author", "fuzz-admin")
    listed = server.request("GET", "/api/v1/config-keys/", token=w["admin"]).json()["results"]
    key = next(k for k in listed if k["name"] == "linux.file_mode")
    for url in (
        f"/api/v1/config-keys/{key['id']}/approve/",
        f"/api/v1/scripts/{key['read_script']['id']}/approve/",
        f"/api/v1/scripts/{key['set_script']['id']}/approve/",
    ):
        r = server.request("POST", url, None, boss)
        assert r.status == 200, (url, r.body)
    item = {"config_key": "linux.file_mode", "parameters": {"path": "/etc/shadow"}, "comparison": "equals"}
    body = {"name": "fuzz", "profile_type": "hardening", "items": [{**item, "desired_value": "640"}]}
    r = server.request("POST", "/api/v1/profiles/", body, w["tech"])
    assert r.status == 201, r.body
    return [key["id"]] + [k["id"] for k in listed if k["id"] != key["id"]], r.json()["id"]


def seed_audit(server, w) -> dict:
    """A profile whose one item the agent's host does not meet (a mode no file has), assigned to
    the world's asset and audited by the agent: the assignment, the audit job, its drift event and
    its observation."""
    item = {"config_key": "linux.file_mode", "parameters": {"path": "/etc/hostname"}, "comparison": "equals"}
    body = {"name": "fuzz-audit", "profile_type": "hardening", "items": [{**item, "desired_value": "7777"}]}
    r = server.request("POST", "/api/v1/profiles/", body, w["tech"])
    assert r.status == 201, r.body
    assignment = assign_profile(server, w, r.json()["id"])
    r = server.request("POST", f"/api/v1/profile-assignments/{assignment}/audit/", None, w["psa"])
    assert r.status == 202, r.body
    [job] = r.json()["jobs"]
    for _ in range(3):  # one instruction at a time per asset: the batch's script may come first
        agent_once(server, w)
        if server.request("GET", f"/api/v1/audit-jobs/{job}/", token=w["psa"]).json()["status"] == "succeeded":
            break
    [drift] = server.request("GET", f"/api/v1/drift-events/?audit_job={job}", token=w["psa"]).json()["results"]
    observations = server.request("GET", f"/api/v1/configuration-observations/?item={drift['item']}", token=w["psa"])
    [observation] = observations.json()["results"]
    return {"assignment": assignment, "job": job, "drift": drift["id"], "observation": observation["id"]}


def seed_enforcement(server, w) -> str:
    """A profile whose one enforce-mode item reads a file that does not exist, assigned by the
    technician and approved by an approver; its audit's drift makes an enforcement job (by the
    task cluster), left queued: its id."""
    path = f"/tmp/rmm-fuzz-absent-{uuid.uuid4().hex}"
    item = {"config_key": "linux.file_mode", "parameters": {"path": path}, "comparison": "equals"}
    item.update(desired_value="600", enforcement_mode="enforce")
    body = {"name": "fuzz-enforce", "profile_type": "hardening", "items": [item]}
    r = server.request("POST", "/api/v1/profiles/", body, w["tech"])
    assert r.status == 201, r.body
    r = server.request(
        "POST",
        "/api/v1/profile-assignments/",
        {"profile": r.json()["id"], "asset": w["asset"], "psa_task_id": w["task"]},
        w["tech"],
    )
    assert r.status == 201 and r.json()["status"] == "awaiting_approval", r.body
    assignment = r.json()["id"]
    [boss] = tokens(server, {"fuzz-boss": "approver"})
    r = server.request("POST", f"/api/v1/profile-assignments/{assignment}/approve/", None, boss)
    assert r.status == 200, r.body
    r = server.request("POST", f"/api/v1/profile-assignments/{assignment}/audit/", None, w["psa"])
    assert r.status == 202, r.body
    [job] = r.json()["jobs"]
    for _ in range(3):  # one instruction at a time per asset
        agent_once(server, w)
        if server.request("GET", f"/api/v1/audit-jobs/{job}/", token=w["psa"]).json()["status"] == "succeeded":
            break
    found = wait_for(
        lambda: server.request("GET", f"/api/v1/enforcement-jobs/?assignment={assignment}", token=w["psa"]).json()[
            "results"
        ],
        30,
        "the enforcement job",
    )
    return found[0]["id"]


def seed_patching(server, w) -> dict:
    """A real scan of the agent's host (read-only), a patch missing on the asset (written as a scan
    would write it: the host may have no update), and a patch job for it awaiting approval."""
    r = server.request("POST", "/api/v1/patch-scans/", {"assets": [w["asset"]], "psa_task_id": w["task"]}, w["psa"])
    assert r.status == 202, r.body
    agent_once(server, w)
    code = (
        "from django.utils import timezone; from patching.models import AssetPatch, PatchCatalog; "
        "e, _ = PatchCatalog.objects.get_or_create(vendor='debian', product='zz-rmm-fuzz', patch_id='1.0-2', "
        "defaults={'source': 'scan'}); "
        f"AssetPatch.objects.create(asset_id={w['asset']!r}, patch=e, status='missing', detected_at=timezone.now()); "
        "print(e.pk)"
    )
    patch = server.manage("shell", "--verbosity", "0", "-c", code).stdout.strip()
    body = {"assets": [w["asset"]], "psa_task_id": w["task"], "patches": [patch], "reboot_policy": "never"}
    r = server.request("POST", "/api/v1/patch-jobs/", body, w["psa"])
    assert r.status == 201, r.body
    return {"patch": patch, "job": r.json()["id"]}


def seed_session(server, w) -> str:
    """A terminal session awaiting approval, made through the engine (the API would first ask the
    agent to be online with the capability, and a session's step would hold the agent): its id.
    Made after the agent's last run, so no agent ever relays it."""
    code = (
        "import uuid; from rmm.access.services import authenticate_token; from rmm.engine import services as engine; "
        f"u, _ = authenticate_token({w['tech']!r}); "
        f"s = engine.create_job(u, 'remote_session', asset_id=uuid.UUID({w['asset']!r}), psa_task_id={w['task']!r}, "
        "initiated_by=u, provider='terminal', session_type='terminal', privileged=False, requires_approval=True); "
        "print(s.pk)"
    )
    done = server.manage("shell", "--verbosity", "0", "-c", code, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def seed_world(server) -> dict:
    """Real objects of every kind the API serves, made through its public doors."""
    w = make_world(server)
    [w["admin"]] = tokens(server, {"fuzz-admin": "admin"})
    tokens(server, {"fuzz-spare": "technician"})  # a token the fuzzing may revoke; never a fuzzing role's own
    ran = publish(server, w, "echo fuzz\n")
    job = run_job(server, w, ran["id"])
    agent_once(server, w)
    pending = server.request(
        "POST", "/api/v1/scripts/", {"name": "pending", "language": "sh", "content": "true\n"}, w["tech"]
    ).json()
    gated = publish(server, w, "echo gated\n", requires_approval=True)
    waiting = run_job(server, w, gated["id"])
    evidence = server.request("GET", "/api/v1/evidence/", token=w["psa"]).json()["results"]
    assert evidence, "the job left no evidence"
    hold = server.request(
        "POST", "/api/v1/evidence/legal-holds/", {"site": w["site"], "reason": "audit"}, w["admin"]
    ).json()
    switch = server.request(
        "POST", "/api/v1/kill-switches/", {"scope": "asset", "target": w["asset"], "reason": "drill"}, w["admin"]
    ).json()
    released = server.request("POST", f"/api/v1/kill-switches/{switch['id']}/release/", {"reason": "over"}, w["admin"])
    assert released.status == 200, released.body
    export = server.request("POST", "/api/v1/evidence/exports/", {"site": w["site"]}, w["admin"]).json()
    batch = server.request(
        "POST",
        "/api/v1/script-jobs/batch/",
        {"script": ran["id"], "assets": [w["asset"]], "psa_task_id": w["task"], "plan": {"canary": 1}},
        w["psa"],
    ).json()["batch"]
    keys, profile = seed_profiles(server, w)
    assignment = server.request(
        "POST",
        "/api/v1/profile-assignments/",
        {"profile": profile, "asset": w["asset"], "psa_task_id": w["task"]},
        w["tech"],
    )
    assert assignment.status == 201, assignment.body
    audit = seed_audit(server, w)
    enforcement = seed_enforcement(server, w)
    pending_package = upload_package(server, w["tech"], "fuzz-pending", b"pending bytes")
    package = upload_package(
        server, w["tech"], "fuzz-deployed", b"deployed bytes", detection={"type": "file", "path": "/x"}
    )
    r = server.request("POST", f"/api/v1/packages/{package['id']}/approve/", None, privileged_approver(server))
    assert r.status == 200, r.body
    r = server.request(
        "POST",
        "/api/v1/deployments/",
        {"package": package["id"], "assets": [w["asset"]], "psa_task_id": w["task"]},
        w["psa"],
    )
    assert r.status == 201, r.body
    deployment = r.json()["jobs"][0]["id"]
    r = server.request("POST", "/api/v1/patch-catalog/import/", documents.redhat(), w["admin"])
    assert r.status == 201, r.body
    catalog = [e["id"] for e in server.request("GET", "/api/v1/patch-catalog/", token=w["admin"]).json()["results"]]
    patches = seed_patching(server, w)
    hook_body = {"url": "http://127.0.0.1:9/fuzz", "event_types": ["job.finished"], "sites": [w["site"]]}
    hook = server.request("POST", "/api/v1/webhooks/", hook_body, w["admin"]).json()
    ping = server.request("POST", f"/api/v1/webhooks/{hook['id']}/ping/", None, w["admin"]).json()
    # Last: the agent never runs again, so this isolation is never carried out on the test's host.
    contain = {"asset": w["asset"], "action": "isolate", "reason": "fuzz", "psa_task_id": w["task"]}
    r = server.request("POST", "/api/v1/containment/", contain, w["admin"])
    assert r.status == 201, r.body
    containment = r.json()["id"]
    scheduled = {"site": w["site"], "psa_task_id": w["task"], "interval_seconds": 86400}
    r = server.request("POST", "/api/v1/patch-scan-schedules/", scheduled, w["psa"])
    assert r.status == 201, r.body
    scan_schedule = r.json()["id"]
    window_body = {"site": w["site"], "days": ["sat"], "start": "22:00", "duration_minutes": 60, "timezone": "UTC"}
    r = server.request("POST", "/api/v1/maintenance-windows/", window_body, w["psa"])
    assert r.status == 201, r.body
    window = r.json()["id"]
    finding_body = {
        "asset": w["asset"],
        "cve": "CVE-2026-1000",
        "product": "zz-rmm-fuzz",
        "fixed_version": "1.0-2",
        "severity": "high",
        "scanner_ref": "fuzz-1",
        "source": "scanner",
        "psa_task_id": w["task"],
    }
    r = server.request("POST", "/api/v1/vulnerability-findings/", finding_body, w["admin"])
    assert r.status == 201, r.body
    finding = r.json()["id"]
    session = seed_session(server, w)
    # A pending version of the site's session policy: its author, the fuzzing's admin, may not
    # decide it (four eyes), nor may its technician or PSA, so it stays pending.
    policy_body = {"site": w["site"], "approval_required": True}
    r = server.request("POST", "/api/v1/session-policies/", policy_body, w["admin"])
    assert r.status == 201, r.body
    session_policy = r.json()["id"]
    siem_body = {"kind": "syslog", "address": "127.0.0.1:9", "format": "cef", "sites": [w["site"]]}
    siem = server.request("POST", "/api/v1/siem-destinations/", siem_body, w["admin"]).json()
    agents = server.request("GET", "/api/v1/agents/", token=w["admin"]).json()["results"]
    sites = server.request("GET", "/api/v1/sites/", token=w["admin"]).json()["results"]
    spare = [
        t["id"]
        for t in server.request("GET", "/api/v1/tokens/", token=w["admin"]).json()["results"]
        if t["user"] == "fuzz-spare"
    ]
    w["seeded"] = {
        "paths": {
            "/api/v1/scripts/": [ran["id"], pending["id"], gated["id"]],
            "/api/v1/script-jobs/": [job["id"], waiting["id"]],
            "/api/v1/assets/": [w["asset"]],
            "/api/v1/agents/": [a["id"] for a in agents],
            "/api/v1/sites/": [s["id"] for s in sites],
            "/api/v1/evidence/": [e["id"] for e in evidence],
            "/api/v1/evidence/legal-holds/": [hold["id"]],
            "/api/v1/evidence/exports/": [export["id"]],
            "/api/v1/kill-switches/": [switch["id"]],
            "/api/v1/psa/cases/": [w["case"]],
            "/api/v1/psa/tasks/": [w["task"]],
            "/api/v1/tokens/": spare,
            "/api/v1/batches/": [batch],
            "/api/v1/config-keys/": keys,
            "/api/v1/profiles/": [profile],
            "/api/v1/profile-assignments/": [assignment.json()["id"], audit["assignment"]],
            "/api/v1/audit-jobs/": [audit["job"]],
            "/api/v1/enforcement-jobs/": [enforcement],
            "/api/v1/drift-events/": [audit["drift"]],
            "/api/v1/configuration-observations/": [audit["observation"]],
            "/api/v1/packages/": [pending_package["id"], package["id"]],
            "/api/v1/deployment-jobs/": [deployment],
            "/api/v1/patch-catalog/": [*catalog, patches["patch"]],
            "/api/v1/patch-jobs/": [patches["job"]],
            "/api/v1/webhooks/": [hook["id"]],
            "/api/v1/webhook-deliveries/": [ping["id"]],
            "/api/v1/containment/": [containment],
            "/api/v1/siem-destinations/": [siem["id"]],
            "/api/v1/patch-scan-schedules/": [scan_schedule],
            "/api/v1/maintenance-windows/": [window],
            "/api/v1/vulnerability-findings/": [finding],
            "/api/v1/remote-sessions/": [session],
            "/api/v1/session-policies/": [session_policy],
        },
        "fields": {
            "script": [ran["id"], gated["id"]],
            "asset": [w["asset"]],
            "assets": [[w["asset"]]],
            "psa_task_id": [w["task"]],
            "psa_task": [w["task"]],
            "psa_case": [w["case"]],
            "case": [w["case"]],
            "site": [w["site"]],
            "target": [w["site"], w["asset"]],
            "related_id": [job["id"]],
            "batch": [batch],
            "assignment": [assignment.json()["id"], audit["assignment"]],
            "audit_job": [audit["job"]],
            "profile": [profile],
            "package": [package["id"]],
            "patches": [[patches["patch"]]],
            "reboot_policy": ["never", "if_required"],
            "url": [hook_body["url"]],
            "event_types": [hook_body["event_types"]],
            "sites": [hook_body["sites"]],
            "kind": [siem_body["kind"], "http"],
            "address": [siem_body["address"], "http://127.0.0.1:9"],
            "shape": ["splunk_hec", "elastic_bulk"],
        },
    }
    return w


def test_every_operation_answers_as_documented_to_each_role(fuzz_server, tmp_path):
    """The three roles are fuzzed at once, each by its own schemathesis process (one worker each:
    Hypothesis is not thread-safe), against the one server."""
    server, w = fuzz_server
    runs = {role: Run(server, w, role, tmp_path / role) for role in ROLES}
    started = time.monotonic()
    problems = [problem for run in runs.values() for problem in run.finish()]
    elapsed = time.monotonic() - started
    print(f"\nfuzzed in {elapsed:.0f}s: " + ", ".join(f"{role} {run.sent} requests" for role, run in runs.items()))
    if problems:
        pytest.fail("\n\n".join([*problems, server.diagnostics()]), pytrace=False)


class Run:
    """One role's schemathesis run over the schema the server serves to that role."""

    def __init__(self, server, w: dict, role: str, folder: Path):
        self.role, self.folder, self.sent = role, folder, 0
        folder.mkdir()
        self.token = w[{"technician": "tech"}.get(role, role)]
        served = server.request("GET", "/api/schema/?format=json", token=self.token)
        assert served.status == 200, served.body[:500]
        (folder / "schema.json").write_bytes(served.body)
        # Each operation, and whether it takes any input: one without (no parameter, no body) is
        # the same request every time, so it gets one, not EXAMPLES, from the fuzzing phase.
        self.operations = {
            f"{method.upper()} {path}": bool(operation.get("parameters") or operation.get("requestBody"))
            for path, item in served.json()["paths"].items()
            for method, operation in item.items()
        }
        self.url = server.url
        self.env = {
            **server.env,
            "SCHEMATHESIS_HOOKS": "tests.e2e.fuzz_hooks",
            "RMM_FUZZ_SEEDED": json.dumps(w["seeded"]),
            "RMM_FUZZ_COUNTS": str(folder / "requests.txt"),
        }
        self._start()

    def _start(self, only: list[str] = ()) -> None:
        """schemathesis over every operation, or over ``only`` these, one after the other."""
        self.output = open(self.folder / "schemathesis.txt", "a+")  # noqa: SIM115 - read back in _wait()
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "--no-color"),
                *("run", str(self.folder / "schema.json"), "--url", self.url),
                *("--header", f"Authorization: Bearer {self.token}"),
                *("--report", "json", "--report-json-path", str(self.folder / "report.json")),
                *(option for name in only for option in ("--include-name", name)),
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self.output,
            stderr=subprocess.STDOUT,
        )

    def _wait(self) -> str | None:
        """What went wrong in the run, if anything."""
        try:
            code = self.process.wait(timeout=1500)
        finally:
            self.process.kill()
        self.output.seek(0)
        report = self.output.read()
        self.output.close()
        if code != 0:
            return f"=== schemathesis as {self.role} (exit {code}) ===\n{report[-40000:]}"
        return None

    def _short(self, skip: int = 0) -> dict[str, int]:
        """Operations that got fewer fuzzing-phase requests than they should, with how many, counting
        the requests after the first ``skip`` lines of the log (those of earlier attempts)."""
        lines = (self.folder / "requests.txt").read_text().splitlines()
        self.sent = len(lines)
        fuzzed = Counter(line.split("\t")[0] for line in lines[skip:] if line.endswith("\tfuzzing"))
        return {
            operation: fuzzed[operation]
            for operation, has_input in sorted(self.operations.items())
            if operation in self.wanted and fuzzed[operation] < (EXAMPLES if has_input else 1)
        }

    def finish(self) -> list[str]:
        """Wait for the run; what went wrong, each naming the role (and schemathesis's report names
        the operation and the check)."""
        problem = self._wait()
        if problem:
            return [problem]
        summary = json.loads((self.folder / "report.json").read_text())["operations"]
        if not summary["tested"] == summary["total"] == len(self.operations):
            return [f"=== as {self.role}: not every operation was tested: {summary}"]
        self.wanted = set(self.operations)
        short = self._short()
        for _ in range(3):
            if not short:
                break
            # schemathesis 4.32 sometimes ends an operation's fuzzing phase after a few examples
            # when other operations ran before it in the same process; alone, it gets them all.
            # Each retry must reach the count by itself.
            before, self.wanted = self.sent, set(short)
            self._start(only=list(short))
            problem = self._wait()
            if problem:
                return [problem]
            short = self._short(skip=before)
        return [f"=== as {self.role}: operations fuzzed fewer than {EXAMPLES} times: {short}"] if short else []
