"""Builders for the objects most tests need, made through the services as a user would."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import uuid
from pathlib import Path

from django.test import Client

# Imported here, not inside a test: importing rmm.asgi runs django.setup(), whose logging
# configuration replaces the root logger's handlers, pytest's log capture among them.
from rmm.asgi import agent_asgi_app
from rmm.authority import services as authority
from rmm.engine import wakeups
from rmm.inventory import services as inventory
from rmm_agent.results import make_result


def make_agent(site, hostname: str | None = None):
    """Enroll an agent the way the real one does; returns (agent, Authorization header)."""
    _, secret = inventory.create_enrollment_token(site)
    facts = {"hostname": hostname or f"host-{uuid.uuid4().hex[:8]}", "os": "Linux", "architecture": "x86_64"}
    agent, agent_secret = inventory.enroll_agent(secret, facts)
    return agent, f"Agent {agent.pk}:{agent_secret}"


def approved_authority(
    site, psa_user, *, case_status="approved", task_status="approved", expires_at=None, self_authorized_jobs=True
):
    """An approved case and task written by ``psa_user``. Most tests let that same account request
    jobs on it: with ``self_authorized_jobs`` the site's policy allows that (the default policy,
    off, makes such jobs wait for an approver: tests/authority/test_self_authorized.py)."""
    if self_authorized_jobs and not site.allow_self_authorized_jobs:
        inventory.set_site_policy("cli:rmm_site_policy", site, allow_self_authorized_jobs=True)
        site.allow_self_authorized_jobs = True
    case = authority.upsert_case(
        psa_user, uuid.uuid4(), title="Patch Tuesday", status=case_status, site_name=site.name, expires_at=expires_at
    )
    return authority.upsert_task(psa_user, uuid.uuid4(), case_id=case.pk, title="Run fix", status=task_status)


def post_json(client, path, data, **extra):
    return client.post(path, data=json.dumps(data), content_type="application/json", **extra)


def approved_script(author, approver, *, name="hello", content="echo hello\n", language="sh", requires_approval=False):
    """A script version written by ``author`` and approved by ``approver`` (two different users)."""
    from scripting import services as scripting

    script = scripting.create_script(
        author, name=name, language=language, content=content, requires_approval=requires_approval
    )
    return scripting.approve_script(script, approver)


def publish(tech, approver, content="echo hello\n", requires_approval=False) -> dict:
    """A script posted by ``tech`` through the API and approved there by ``approver``."""
    r = tech.post(
        "/api/v1/scripts/",
        {"name": "hello", "language": "sh", "content": content, "requires_approval": requires_approval},
        format="json",
    )
    assert r.status_code == 201, r.content
    script = r.json()
    assert script["approval_status"] == "pending"
    assert script["sha256"] == hashlib.sha256(content.encode()).hexdigest()
    r = approver.post(f"/api/v1/scripts/{script['id']}/approve/")
    assert r.status_code == 200, r.content
    assert r.json()["approval_status"] == "approved"
    return script


def heartbeat(auth, **body) -> dict:
    """The agent's heartbeat as ``auth`` sends it; asserts a 200 and returns its answer."""
    body.setdefault("capacity", 4)
    r = post_json(Client(), "/api/v1/agent/heartbeat/", body, HTTP_AUTHORIZATION=auth)
    assert r.status_code == 200, r.content
    return r.json()


def report(auth, instruction_id, stdout="hello\n", exit_code=0, outcome="completed", **extra):
    """The agent's result of ``instruction_id``, made by the real agent's own builder."""
    body = make_result(instruction_id, outcome, exit_code=exit_code, stdout=stdout)
    body.update(extra)
    return post_json(Client(), "/api/v1/agent/results/", body, HTTP_AUTHORIZATION=auth)


def otp_login(client, user):
    """Sign ``user`` in on a test client with a verified second factor, as the TOTP page would.

    Admins, approvers and superusers are sent to the second-factor pages without one. This makes a
    confirmed TOTP device and marks the session verified the way ``django_otp.login`` does.
    """
    from django_otp import DEVICE_ID_SESSION_KEY
    from django_otp.plugins.otp_totp.models import TOTPDevice

    device = TOTPDevice.objects.filter(user=user, confirmed=True).first()
    if device is None:
        device = TOTPDevice.objects.create(user=user, name="test", confirmed=True)
    client.force_login(user)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session.save()
    return client


def _agent_scope(auth: str, body: bytes) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/agent/heartbeat/",
        "raw_path": b"/api/v1/agent/heartbeat/",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"authorization", auth.encode()),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }


async def agent_call(auth: str, body: dict, leave_after: float | None = None) -> list[dict]:
    """One heartbeat through the agent protocol's ASGI handler (rmm/asgi.py), as a server drives
    it: its sync parts run in this test's thread, which holds the test's transaction; the client
    disconnects after ``leave_after`` seconds, or once answered. Returns the messages sent."""
    raw = json.dumps(body).encode()
    sent, answered, first = [], asyncio.Event(), [True]

    async def receive():
        if first[0]:
            first[0] = False
            return {"type": "http.request", "body": raw, "more_body": False}
        if leave_after is None:
            await answered.wait()
        else:
            await asyncio.sleep(leave_after)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            answered.set()

    await agent_asgi_app.handle(_agent_scope(auth, raw), receive, send)
    return sent


async def until_held(agent_id, call: asyncio.Future) -> None:
    """Wait until the heartbeat ``call`` of this agent is held: past its first look for work,
    waiting for a wake-up."""
    deadline = asyncio.get_running_loop().time() + 10
    while asyncio.get_running_loop().time() < deadline:
        assert not call.done(), "the heartbeat was not held"
        if any(waiter.future is not None for waiter in wakeups._waiting.get(str(agent_id), ())):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the heartbeat was not held within 10 s")


def check_deploy(env: dict[str, str]) -> str:
    """``manage.py check --deploy --fail-level WARNING`` under ``env`` (settings are read at
    import, so in a process of its own): its output, after asserting it passed without a warning."""
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "System check identified no issues" in output and "WARNINGS" not in output, output
    return output
