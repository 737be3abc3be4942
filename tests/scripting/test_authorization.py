"""Law 7, scripting's routes: scripts, script jobs (one and a batch), the run page and the script jobs'
admin, for every role, in-site and out-of-site (harness: tests/support/authorization.py)."""

from __future__ import annotations

import pytest

from scripting.models import Script, ScriptJob
from tests.support.authorization import (
    APPROVE,
    AUTHOR_SCRIPTS,
    EVERYONE,
    IN,
    REQUEST_JOBS,
    STAFF,
    Row,
    World,
    api,
    callers,
    check,
    ids,
    only,
    page,
)


def job_body(asset="{asset}", task="{task}"):
    return {"script": "{script_hello}", "asset": asset, "psa_task_id": task}


def batch_body(asset="{asset}", task="{task}"):
    return {"script": "{script_hello}", "assets": [asset], "psa_task_id": task}


def _new_job(w) -> bool:
    return ScriptJob.objects.filter(asset_id=w.ids["asset"]).exclude(pk__in=w.jobs).exists()


def _new_script(w) -> bool:
    return Script.objects.filter(name="console-matrix", approval_status="pending").exists()


ROWS = [
    # --- scripts: global artefacts, the same for every site
    api("GET", "/api/v1/scripts/", 200, shows=(("script_draft", EVERYONE),)),
    api("GET", "/api/v1/scripts/{script_draft}/", 200),
    api(
        "POST",
        "/api/v1/scripts/",
        only(AUTHOR_SCRIPTS, 201, 403),
        body={"name": "matrix", "language": "sh", "content": "echo matrix\n"},
    ),
    api("POST", "/api/v1/scripts/{script_draft}/approve/", only(APPROVE, 200, 403)),
    api("POST", "/api/v1/scripts/{script_hello}/approve/", only(APPROVE, 409, 403), label="already approved"),
    api("POST", "/api/v1/scripts/{script_priv}/approve/", 403, label="privileged: needs approve_privileged"),
    api("POST", "/api/v1/scripts/{script_draft}/reject/", only(APPROVE, 200, 403), body={"reason": "no"}),
    api("POST", "/api/v1/scripts/{script_draft}/reject/", only(APPROVE, 400, 403), body={}, label="no reason"),
    # --- script jobs
    api("GET", "/api/v1/script-jobs/", 200, shows=(("job_done", IN),)),
    api("GET", "/api/v1/script-jobs/?asset={asset}", 200, shows=(("job_done", IN),), hidden=("asset",)),
    api("GET", "/api/v1/script-jobs/?psa_task={task}", 200, shows=(("job_done", IN),), hidden=("task",)),
    api("GET", "/api/v1/script-jobs/{job_done}/", 200, 404, hidden=("job_done",)),
    api("GET", "/api/v1/script-jobs/{job_done}.json", 200, 404, hidden=("job_done",), label="format suffix"),
    api(
        "POST",
        "/api/v1/script-jobs/",
        only(REQUEST_JOBS, 201, 403),
        only(REQUEST_JOBS, 400, 403),
        body=job_body(),
        hidden=("asset", "task"),
    ),
    api(
        "POST",
        "/api/v1/script-jobs/",
        only(REQUEST_JOBS, 400, 403),
        body=job_body(asset="{other_asset}"),
        hidden=("task",),
        label="beta's asset on alpha's task",
    ),
    api(
        "POST",
        "/api/v1/script-jobs/batch/",
        only(REQUEST_JOBS, 201, 403),
        only(REQUEST_JOBS, 400, 403),
        body=batch_body(),
        hidden=("asset", "task"),
    ),
    api(
        "POST",
        "/api/v1/script-jobs/batch/",
        only(REQUEST_JOBS, 400, 403),
        body=batch_body(asset="{other_asset}"),
        hidden=("task",),
        label="beta's asset on alpha's task",
    ),
    api("POST", "/api/v1/script-jobs/{job_waiting}/approve/", only(APPROVE, 200, 403), 404, hidden=("job_waiting",)),
    api(
        "POST",
        "/api/v1/script-jobs/{job_done}/approve/",
        only(APPROVE, 409, 403),
        404,
        hidden=("job_done",),
        label="finished",
    ),
    api(
        "POST",
        "/api/v1/script-jobs/{job_waiting}/reject/",
        only(APPROVE, 200, 403),
        404,
        body={"reason": "not now"},
        hidden=("job_waiting",),
    ),
    api(
        "POST",
        "/api/v1/script-jobs/{job_waiting}/reject/",
        only(APPROVE, 400, 403),
        404,
        body={},
        hidden=("job_waiting",),
        label="no reason",
    ),
    # --- the run page
    page("GET", "/console/scripts/run/", 200, shows=(("asset", IN), ("task", IN))),
    # The run form answers 302 to the new job when done; 403 with the service's refusal beside the
    # form when the role may not request jobs; 400 for an asset the caller cannot pick.
    page(
        "POST",
        "/console/scripts/run/",
        only(REQUEST_JOBS, 302, 403),
        400,
        body={"script": "{script_hello}", "asset": "{asset}", "psa_task": "{task}"},
        effect=(_new_job, callers(REQUEST_JOBS, "in")),
    ),
    # --- the script library and editor (scripts are global: the same for every site)
    page("GET", "/console/scripts/", 200, shows=(("script_draft", EVERYONE),)),
    page("GET", "/console/scripts/{script_draft}/", 200),
    page("GET", "/console/scripts/new/", only(AUTHOR_SCRIPTS, 200, 403)),
    page("GET", "/console/scripts/new/?from={script_hello}", only(AUTHOR_SCRIPTS, 200, 403), label="next version"),
    page(
        "POST",
        "/console/scripts/new/",
        only(AUTHOR_SCRIPTS, 302, 403),
        body={"name": "console-matrix", "language": "sh", "content": "echo matrix\n", "timeout_seconds": "60"},
        effect=(_new_script, callers(AUTHOR_SCRIPTS)),
    ),
    # --- admin
    page("GET", "/admin/scripting/scriptjob/", only(STAFF, 200, 302), shows=(("job_done", callers(STAFF, "in")),)),
    # The admin answers an object it will not show with a redirect to its index, as for no object.
    page("GET", "/admin/scripting/scriptjob/{job_done}/change/", only(STAFF, 200, 302), 302, hidden=("job_done",)),
]


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_matrix(row: Row, matrix: World):
    check(row, matrix)
