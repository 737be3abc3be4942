"""Law 7, the profiles app's routes: config keys (global artefacts) and profiles (global desired
state), for every role, in-site and out-of-site (harness: tests/support/authorization.py)."""

from __future__ import annotations

import pytest

from profiles.models import ConfigurationAuditJob
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


def _audited_again(w) -> bool:
    return ConfigurationAuditJob.objects.filter(assignment_id=w.ids["assignment"]).count() > 1


ITEM = {"config_key": "matrix.line", "parameters": {"path": "/etc/x", "key": "K"}, "comparison": "equals"}

ROWS = [
    # --- config keys: every version, the same for every site
    api("GET", "/api/v1/config-keys/", 200, shows=(("config_key_pending", EVERYONE),)),
    api("GET", "/api/v1/config-keys/{config_key}/", 200),
    api("POST", "/api/v1/config-keys/{config_key_pending}/approve/", only(APPROVE, 200, 403)),
    api("POST", "/api/v1/config-keys/{config_key}/approve/", only(APPROVE, 409, 403), label="already approved"),
    api("POST", "/api/v1/config-keys/{config_key_pending}/reject/", only(APPROVE, 200, 403), body={"reason": "no"}),
    # --- profiles: desired state, the same for every site (assignments are per site, below)
    api("GET", "/api/v1/profiles/", 200, shows=(("profile", EVERYONE),)),
    api("GET", "/api/v1/profiles/{profile}/", 200),
    api(
        "POST",
        "/api/v1/profiles/",
        only(AUTHOR_SCRIPTS, 201, 403),
        body={"name": "new", "profile_type": "baseline", "items": [ITEM]},
    ),
    api(
        "POST",
        "/api/v1/profiles/",
        only(AUTHOR_SCRIPTS, 400, 403),
        body={"name": "new", "profile_type": "baseline", "items": [{**ITEM, "config_key": "matrix.pending"}]},
        label="key not approved",
    ),
    api("POST", "/api/v1/profiles/{profile}/revisions/", only(AUTHOR_SCRIPTS, 201, 403), body={"items": [ITEM]}),
    api("GET", "/api/v1/profiles/{profile}/items/", 200),
    api("GET", "/api/v1/profiles/{profile}/items/?revision=1", 200),
    # --- assignments: per site (alpha); out-of-site callers cannot tell them from missing ones
    api("GET", "/api/v1/profile-assignments/", 200, shows=(("assignment", IN), ("assignment_waiting", IN))),
    api("GET", "/api/v1/profile-assignments/{assignment}/", 200, 404, hidden=("assignment",)),
    api(
        "POST",
        "/api/v1/profile-assignments/",
        only(AUTHOR_SCRIPTS, 201, 403),
        only(AUTHOR_SCRIPTS, 404, 403),
        body={"profile": "{profile_enforce}", "asset": "{asset}", "psa_task_id": "{task}"},
    ),
    api(
        "PATCH",
        "/api/v1/profile-assignments/{assignment}/",
        only(AUTHOR_SCRIPTS, 200, 403),
        404,
        body={"audit_interval_seconds": 600},
        hidden=("assignment",),
    ),
    api(
        "DELETE",
        "/api/v1/profile-assignments/{assignment}/",
        only(AUTHOR_SCRIPTS, 204, 403),
        404,
        hidden=("assignment",),
    ),
    api(
        "POST",
        "/api/v1/profile-assignments/{assignment}/withdraw/",
        only(AUTHOR_SCRIPTS, 200, 403),
        404,
        body={"reason": "done"},
        hidden=("assignment",),
    ),
    api(
        "POST",
        "/api/v1/profile-assignments/{assignment_waiting}/approve/",
        only(APPROVE, 200, 403),
        404,
        hidden=("assignment_waiting",),
    ),
    api(
        "POST",
        "/api/v1/profile-assignments/{assignment}/approve/",
        only(APPROVE, 409, 403),
        404,
        label="not awaiting approval",
    ),
    api(
        "POST",
        "/api/v1/profile-assignments/{assignment_waiting}/reject/",
        only(APPROVE, 200, 403),
        404,
        body={"reason": "no"},
        hidden=("assignment_waiting",),
    ),
    # --- audits: per site, like jobs (the assignment, its audit job and drift are in alpha)
    api(
        "POST",
        "/api/v1/profile-assignments/{assignment}/audit/",
        only(REQUEST_JOBS, 202, 403),
        404,
        hidden=("assignment",),
    ),
    api("GET", "/api/v1/assets/{asset}/compliance/", 200, 404, hidden=("asset",)),
    api("GET", "/api/v1/compliance-summary/", 200),
    api("GET", "/api/v1/compliance-summary/?by=asset", 200, shows=(("asset", IN),)),
    api("GET", "/api/v1/configuration-observations/", 200, shows=(("observation", IN),)),
    api(
        "GET",
        "/api/v1/configuration-observations/?asset={asset}",
        200,
        shows=(("observation", IN),),
        hidden=("asset",),
    ),
    api("GET", "/api/v1/configuration-observations/{observation}/", 200, 404, hidden=("observation",)),
    api("GET", "/api/v1/drift-events/", 200, shows=(("drift_event", IN),)),
    api("GET", "/api/v1/drift-events/?asset={asset}", 200, shows=(("drift_event", IN),), hidden=("asset",)),
    api("GET", "/api/v1/audit-jobs/?assignment={assignment}", 200, shows=(("audit_job", IN),), hidden=("assignment",)),
    api("GET", "/api/v1/drift-events/{drift_event}/", 200, 404, hidden=("drift_event",)),
    api("GET", "/api/v1/audit-jobs/", 200, shows=(("audit_job", IN),)),
    api("GET", "/api/v1/audit-jobs/{audit_job}/", 200, 404, hidden=("audit_job",)),
    # --- enforcement jobs: per site, like jobs (the one in the world is alpha's)
    api("GET", "/api/v1/enforcement-jobs/", 200, shows=(("enforcement_job", IN),)),
    api(
        "GET",
        "/api/v1/enforcement-jobs/?assignment={assignment}",
        200,
        shows=(("enforcement_job", IN),),
        hidden=("assignment",),
    ),
    api("GET", "/api/v1/enforcement-jobs/{enforcement_job}/", 200, 404, hidden=("enforcement_job",)),
    # --- console: each caller's sites only (the world's audit read alpha's asset)
    page("GET", "/console/compliance/", 200, shows=(("site", IN), ("assignment", IN), ("assignment_waiting", IN))),
    page("GET", "/console/compliance/audits/", 200),
    # the console's audit action: the API's service; a role that may not is told so on the page
    page(
        "POST",
        "/console/compliance/assignments/{assignment}/audit/",
        302,
        404,
        hidden=("assignment",),
        effect=(_audited_again, callers(REQUEST_JOBS, "in")),
    ),
    # --- admin (read-only)
    page("GET", "/admin/profiles/configkey/", only(STAFF, 200, 302), shows=(("config_key_pending", callers(STAFF)),)),
    page("GET", "/admin/profiles/configurationprofile/{profile}/change/", only(STAFF, 200, 302)),
    page(
        "GET",
        "/admin/profiles/assetconfigurationprofile/",
        only(STAFF, 200, 302),
        shows=(("assignment_waiting", callers(STAFF, "in")),),
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_matrix(row: Row, matrix: World):
    check(row, matrix)
