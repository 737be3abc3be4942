"""The scanner closes the loop, end to end, as root, against the real local apt repository of
tests/e2e/test_patching.py: version 1 installed, version 2 available → the agent's scan reports it
missing → a scanner finding on the PSA's remediation task → a patch job, approved by a second
person, installs version 2 → the re-scan marks it installed and the finding awaits verification →
the scanner stand-in (a real HTTP server on 127.0.0.1 subscribed to
``finding.verification_requested``) checks the endpoint and posts its verification → the finding
is verified, the patch_result and scan_verification evidence is in an export that verifies
offline, and the PSA stand-in was told the case may close. A package whose post-install script
fails leaves its patch ``failed`` and its finding open."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.e2e.flows import agent_once, make_world, privileged_approver, wait_for
from tests.e2e.server import Server
from tests.e2e.test_key_rotation import export_bundle, verify_offline

# pytestmark: root, dpkg and apt, as there; repo: its fixture
from tests.e2e.test_patching import patch_job, patch_rows, pytestmark, repo, row, status  # noqa: F401

FINDINGS = "/api/v1/vulnerability-findings/"


class ScannerStandIn:
    """A vulnerability scanner: told by a signed webhook that a fix awaits verification, it
    "rescans" (asks dpkg what the endpoint has installed) and posts its answer to the RMM."""

    def __init__(self, server: Server, token: str):
        self.server, self.token, self.secret = server, token, ""
        self.asked: list[dict] = []
        self.answers: list[int] = []
        scanner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    message = Webhook(scanner.secret).verify(raw, {k.lower(): v for k, v in self.headers.items()})
                except WebhookVerificationError:
                    self.send_response(401)
                    self.end_headers()
                    return
                self.send_response(204)
                self.end_headers()
                if message["type"] == "finding.verification_requested":
                    # answered apart from the delivery, as a scanner queues its rescans
                    threading.Thread(target=scanner.rescan, args=(message["data"],), daemon=True).start()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/scanner-hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def rescan(self, asked: dict) -> None:
        self.asked.append(asked)
        found = status(asked["product"])
        fixed = found == f"installed {asked['fixed_version']}"
        body = {"verified": fixed, "details": f"rescan: dpkg reports {found or 'nothing'}"}
        self.answers.append(self.server.request("POST", asked["verify"], body, self.token).status)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def report(server: Server, w: dict, scanner: str, product: str, version: str, ref: str) -> dict:
    body = {
        "asset": w["asset"],
        "cve": f"CVE-2026-{uuid.uuid4().int % 90000 + 10000}",
        "product": product,
        "fixed_version": version,
        "severity": "high",
        "scanner_ref": ref,
        "source": "scanner",
        "psa_task_id": w["task"],
    }
    r = server.request("POST", FINDINGS, body, scanner)
    assert r.status == 201, r.body
    return r.json()


def remediation_case(server: Server, w: dict) -> dict:
    """Another PSA case and remediation task on the world's site: the world, under them."""
    case, task = str(uuid.uuid4()), str(uuid.uuid4())
    r = server.request(
        "PUT", f"/api/v1/psa/cases/{case}/", {"title": "CVE fix 2", "status": "approved", "site": w["site"]}, w["psa"]
    )
    assert r.status == 201, r.body
    body = {"case": case, "title": "Patch it", "status": "approved"}
    assert server.request("PUT", f"/api/v1/psa/tasks/{task}/", body, w["psa"]).status == 201
    return {**w, "case": case, "task": task}


def finding(server: Server, w: dict, finding_id: str) -> dict:
    return server.request("GET", f"{FINDINGS}{finding_id}/", token=w["psa"]).json()


def told(receiver, event: str, case: str) -> list[dict]:
    return [
        item["body"]
        for item in receiver.received
        if item["signed"] and item["body"]["event"] == event and item["body"].get("psa_case_id") == case
    ]


def test_the_scanner_verifies_the_fix_a_patch_job_installed_and_the_case_may_close(repo, tmp_path, psa_receiver):  # noqa: F811
    good, bad = repo
    env = {
        "RMM_AGENT_REBOOT_REQUIRED_PATH": str(tmp_path / "none"),
        "RMM_PSA_WEBHOOK_URL": psa_receiver.url,
        "RMM_PSA_WEBHOOK_SECRET": psa_receiver.secret,
        "RMM_WEBHOOK_ALLOW_PRIVATE": "1",  # the scanner stand-in listens on 127.0.0.1
    }
    (tmp_path / "server").mkdir()
    server = Server(tmp_path / "server", env).start()
    scanner_token = server.token(f"scanner-{uuid.uuid4().hex[:6]}", "scanner")
    scanner = ScannerStandIn(server, scanner_token)
    try:
        w = make_world(server)
        approver = privileged_approver(server)
        admin = server.token(f"admin-{uuid.uuid4().hex[:6]}", "admin")
        hook = {"url": scanner.url, "event_types": ["finding.verification_requested"], "sites": [w["site"]]}
        r = server.request("POST", "/api/v1/webhooks/", hook, admin)
        assert r.status == 201, r.body
        scanner.secret = r.json()["secret"]

        r = server.request("POST", "/api/v1/patch-scans/", {"assets": [w["asset"]], "psa_task_id": w["task"]}, w["psa"])
        assert r.status == 202, r.body
        agent_once(server, w)
        rows = patch_rows(server, w, good, bad)
        assert row(rows, good, "1.0-2")["status"] == "missing" and row(rows, bad, "1.0-2")["status"] == "missing"

        # The scanner flags the risk; the PSA's remediation task authorises the fix.
        fixed = report(server, w, scanner_token, good, "1.0-2", "scan-1/good")
        assert fixed["status"] == "open" and fixed["psa_case_id"] == w["case"]
        r = server.request("POST", FINDINGS, {**fixed, "cve": "CVE-26-1", "asset": w["asset"]}, scanner_token)
        assert r.status == 400 and "cve" in r.json()

        done = patch_job(server, w, approver, row(rows, good, "1.0-2")["patch"]["id"], "if_required")
        assert done["status"] == "completed" and status(good) == "installed 1.0-2"
        assert row(patch_rows(server, w, good), good, "1.0-2")["status"] == "installed"

        # The re-scan asked the scanner; it checked the endpoint and verified.
        assert wait_for(lambda: scanner.answers, 60, "the scanner's verification") == [200]
        verified = finding(server, w, fixed["id"])
        assert verified["status"] == "verified" and scanner.asked[0]["finding"] == fixed["id"]
        assert verified["patch_job"] == done["id"] and verified["installed_version"] == "1.0-2"
        assert "dpkg reports installed 1.0-2" in verified["verification_details"]
        # (the first scan's end told it too, before any finding held the case open)
        [closing] = wait_for(
            lambda: [c for c in told(psa_receiver, "case.may_close", w["case"]) if "finding" in c], 60, "case.may_close"
        )
        assert closing["finding"]["finding"] == fixed["id"] and closing["finding"]["status"] == "verified"
        assert (
            server.request("GET", f"{FINDINGS}?status=awaiting_verification", token=scanner_token).json()["results"]
            == []
        )

        # A second run, on a case of its own: the package's post-install script fails, so its patch
        # is failed, its finding stays open, and the case is not told it may close.
        second = remediation_case(server, w)
        broken = report(server, second, scanner_token, bad, "1.0-2", "scan-2/bad")
        failed = patch_job(server, second, approver, row(rows, bad, "1.0-2")["patch"]["id"], "never")
        assert failed["jobs"][0]["status"] == "failed", failed
        assert row(patch_rows(server, w, bad), bad, "1.0-2")["status"] == "failed"
        assert finding(server, w, broken["id"])["status"] == "open"
        ended = failed["jobs"][0]["id"]
        wait_for(lambda: any(b.get("job_id") == ended for b in told(psa_receiver, "job.finished", second["case"])), 60)
        assert told(psa_receiver, "case.may_close", second["case"]) == []
        assert len(scanner.asked) == 1  # nothing more to verify

        # Evidence: the install, the re-scan and the verification, in an export that verifies offline.
        results = server.request("GET", "/api/v1/evidence/?evidence_type=patch_result", token=w["psa"]).json()
        proofs = server.request("GET", "/api/v1/evidence/?evidence_type=scan_verification", token=w["psa"]).json()
        assert len(proofs["results"]) == 1 and len(results["results"]) == 4
        compliance = server.token(f"comp-{uuid.uuid4().hex[:6]}", "compliance")
        _, bundle = export_bundle(server, w, compliance, tmp_path / "export")
        manifest = json.loads((bundle / "manifest.json").read_text())
        listed = json.dumps(manifest)
        assert all(item["id"] in listed for item in results["results"] + proofs["results"])
        checked = verify_offline(bundle)
        assert checked.returncode == 0 and "VERDICT: PASS" in checked.stdout, checked.stdout
    finally:
        scanner.close()
        server.stop()
