"""Least privilege (Law 7) with a real root agent: scripts run as the dedicated run-as account
(``rmm-run``) unless their version is marked privileged, and approving such a version needs its
own permission."""

import os
import pwd
import uuid

import pytest

from tests.e2e.flows import agent_once, make_world, publish, run_job, tokens

if os.geteuid() != 0:
    if os.environ.get("CI"):
        pytest.fail("needs root to drop privileges (CI is set, so this may not be skipped)", pytrace=False)
    pytest.skip("needs root to drop privileges", allow_module_level=True)


@pytest.fixture(scope="module")
def world(server):
    return make_world(server)


def run_to_end(server, w, script_id) -> dict:
    job = run_job(server, w, script_id)
    agent_once(server, w)
    job = server.request("GET", f"/api/v1/script-jobs/{job['id']}/", token=w["psa"]).json()
    assert job["status"] == "succeeded", job
    return job


def test_a_script_runs_as_the_run_as_account_unless_its_version_is_privileged(server, world):
    w = world
    assert w["config"]["run_as"] == "rmm-run"
    run_as = pwd.getpwnam("rmm-run")
    assert run_as.pw_uid != 0
    assert run_as.pw_shell.endswith(("nologin", "false")), "a system account no one logs in to"

    plain = publish(server, w, "id -u\n")
    assert run_to_end(server, w, plain["id"])["result"]["stdout"] == f"{run_as.pw_uid}\n"

    r = server.request(
        "POST",
        "/api/v1/scripts/",
        {"name": f"root-{uuid.uuid4().hex[:6]}", "language": "sh", "content": "id -u\n", "privileged": True},
        w["tech"],
    )
    assert r.status == 201, r.body
    privileged = r.json()
    assert privileged.get("privileged") is True, privileged

    # An approver without the privileged-approval permission may not let it run as root.
    r = server.request("POST", f"/api/v1/scripts/{privileged['id']}/approve/", token=w["approver"])
    assert r.status == 403, r.body
    assert (
        server.request("GET", f"/api/v1/scripts/{privileged['id']}/", token=w["tech"]).json()["approval_status"]
        == "pending"
    )

    # One who holds it may.
    name = f"root-approver-{uuid.uuid4().hex[:6]}"
    [root_approver] = tokens(server, {name: "approver"})
    server.manage(
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model\n"
        "from django.contrib.auth.models import Permission\n"
        f"user = get_user_model().objects.get(username={name!r})\n"
        'user.user_permissions.add(Permission.objects.get(codename="approve_privileged"))',
    )
    r = server.request("POST", f"/api/v1/scripts/{privileged['id']}/approve/", token=root_approver)
    assert r.status == 200, r.body
    assert r.json()["approval_status"] == "approved"

    assert run_to_end(server, w, privileged["id"])["result"]["stdout"] == "0\n"
