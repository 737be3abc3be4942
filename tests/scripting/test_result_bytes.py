"""Any byte a script can print is kept: the evidence holds the exact bytes (reversibly escaped where
they are not plain text) and their sha256, on SQLite and on PostgreSQL (issue 11, defect 4)."""

from __future__ import annotations

import hashlib
import json
import re
from types import SimpleNamespace

import pytest
from django.test import Client

from evidence.models import RmmEvidence
from evidence.services import read_blob
from rmm_agent.protocol import result_hash
from rmm_agent.results import make_result
from scripting import services as scripting
from scripting.models import ScriptJob
from tests.helpers import approved_authority, approved_script, make_agent, post_json

OUTPUTS = {
    "nul": b"a\x00b\n",
    "invalid_utf8": b"caf\xe9 \xff\xfe\x80 ok\n",
    "newlines": b"\n" * (1024 * 1024),
    "nuls": b"\x00" * (1024 * 1024),
    "backslashes": b"C:\\x00 is not a NUL, \\\\ two\n",
    "mixed": b"\\x41\x00\\\xff\xc3\xa9\n",
    "utf8": "naïve 日本 😀\n".encode(),
}


def unescape(text: str, escaped: bool) -> bytes:
    """The documented reversal (docs/evidence.md): ``\\\\`` is one backslash, ``\\xNN`` one byte."""
    data = text.encode("utf-8")
    if not escaped:
        return data
    return re.sub(
        rb"\\(\\|x([0-9a-f]{2}))", lambda m: b"\\" if m.group(1) == b"\\" else bytes.fromhex(m.group(2).decode()), data
    )


@pytest.fixture
def running(caller, site):
    psa, tech, boss = caller("psa", "psa"), caller("tech", "technician"), caller("boss", "approver")
    agent, auth = make_agent(site, "web-01")
    task = approved_authority(site, psa.user)
    script = approved_script(tech.user, boss.user)
    job = scripting.create_script_job(psa.user, script_id=script.pk, asset_id=agent.asset_id, psa_task_id=task.pk)
    beat = post_json(Client(), "/api/v1/agent/heartbeat/", {"capacity": 1}, HTTP_AUTHORIZATION=auth)
    [envelope] = beat.json()["instructions"]
    return SimpleNamespace(
        job=job, psa=psa, auth=auth, instruction_id=json.loads(envelope["payload"])["instruction_id"]
    )


def deliver(running, body: dict) -> None:
    raw = json.dumps(body).encode()
    response = Client(raise_request_exception=False).post(
        "/api/v1/agent/results/", data=raw, content_type="application/json", HTTP_AUTHORIZATION=running.auth
    )
    assert response.status_code == 201, (response.status_code, response.content[:300])


def stored_streams(running) -> tuple[dict, dict]:
    """The job's result as the API shows it, and the result section of its evidence document."""
    job = running.psa.get(f"/api/v1/script-jobs/{running.job.pk}/").json()
    [evidence_id] = job["evidence"]
    document = json.loads(read_blob(RmmEvidence.objects.get(pk=evidence_id)))
    return job, document["result"]


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_every_byte_a_script_prints_is_kept_exactly(running, name):
    stdout, stderr = OUTPUTS[name], OUTPUTS[name][::-1]
    deliver(running, make_result(running.instruction_id, "completed", exit_code=0, stdout=stdout, stderr=stderr))
    job, result = stored_streams(running)
    assert job["status"] == "succeeded"
    for stream, data in (("stdout", stdout), ("stderr", stderr)):
        assert result[f"{stream}_sha256"] == hashlib.sha256(data).hexdigest()
        assert result[f"{stream}_bytes"] == len(data)
        assert unescape(result[stream], result[f"{stream}_escaped"]) == data
        # The API and the database hold the same display text, with the same flag.
        assert job["result"][stream] == result[stream]
        assert job["result"][f"{stream}_escaped"] == result[f"{stream}_escaped"]
        assert "\x00" not in job["result"][stream]
    plain = name in ("newlines", "utf8", "backslashes")  # UTF-8 without NUL: its own text
    assert result["stdout_escaped"] is not plain


def test_text_sent_with_a_nul_by_an_older_agent_is_kept_too(running):
    """An agent that sends output as JSON text, NUL included (`printf 'a\\000b\\n'`)."""
    body = {
        "instruction_id": running.instruction_id,
        "outcome": "completed",
        "exit_code": 0,
        "stdout": "a\u0000b\n",
        "stderr": "",
        "stdout_truncated": False,
        "stderr_truncated": False,
        "reason": None,
    }
    body["hash"] = result_hash(body)
    deliver(running, body)
    job, result = stored_streams(running)
    assert job["status"] == "succeeded"
    assert job["result"]["stdout"] == "a\\x00b\n"
    assert unescape(result["stdout"], result["stdout_escaped"]) == b"a\x00b\n"
    assert ScriptJob.objects.get(pk=running.job.pk).result.stdout_escaped is True
