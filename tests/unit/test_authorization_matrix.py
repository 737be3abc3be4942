"""Law 7 as a table: every API endpoint and console page, for every role, in-site and out-of-site.

One world is built once for the module (two sites; the objects under test live in ``alpha``), inside
a transaction that is rolled back when the module ends. Each test is one row of ``ROWS``: it calls
the row's endpoint as each of the fifteen callers (seven roles granted ``alpha``, the same seven
granted only ``beta``, and anonymous), each call in its own savepoint that is rolled back, so every
caller meets the same world and a state-changing POST is deterministic. The row states the exact
status each caller gets; where it says so, also who sees an object in the answer, what changed,
and that an out-of-site caller cannot tell the object from one that does not exist.

The objects are authored, requested and engaged by third parties (``w-*`` users, every site), so
four eyes never refuses a matrix caller; four eyes has its own tests.

API rows call with the role's bearer token; console and admin rows with a session (a verified
second factor for admins and approvers, ``force_login`` for the others). ``test_every_route_has_a_row``
fails on any URL under /api/, /console/ or /admin/approvals/ (or any method of a DRF route) that
has no row here.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.cookies import SimpleCookie

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Max
from django.test import Client, override_settings
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from rest_framework.test import APIClient

from evidence import exports
from evidence import services as evidence
from evidence.models import EvidenceExport, RmmEvidence
from rmm.access import roles as access
from rmm.access import services as access_services
from rmm.access.models import ApiToken
from rmm.engine.models import Batch, KillSwitch
from rmm.engine.services import kill_switches
from rmm.history.models import HistoryEvent
from rmm.inventory import services as inventory
from scripting import services as scripting
from scripting.models import Script, ScriptJob
from tests.helpers import approved_authority, approved_script, make_agent, otp_login
from tests.unit.test_script_flow import heartbeat, report

# --- who ---------------------------------------------------------------------------------------

ROLES = ("admin", "technician", "approver", "compliance", "psa", "edr", "scanner")
ANON = "anonymous"
CALLERS = tuple(f"{role}:{where}" for where in ("in", "out") for role in ROLES) + (ANON,)

# What each role may do, written out (the test is the spec); test_role_groups_match_access
# holds them to rmm/access.py CAPABILITIES.
APPROVE = ("admin", "approver")
MANAGE_AUTHORITY = ("admin", "psa")
AUTHOR_SCRIPTS = ("admin", "technician")
REQUEST_JOBS = ("admin", "technician", "psa", "edr", "scanner")
EXPORT_EVIDENCE = ("admin", "compliance")
MANAGE_LEGAL_HOLDS = ("admin", "compliance")
MANAGE_AGENTS = ("admin",)
MANAGE_ACCESS = ("admin",)
ENGAGE_KILL_SWITCH = ("admin", "technician", "approver", "psa", "edr", "scanner")
STAFF = ("admin", "approver")  # rmm_token makes them staff: the admin and its approval queue


def callers(roles=ROLES, where=("in", "out")) -> frozenset[str]:
    where = (where,) if isinstance(where, str) else where
    return frozenset(f"{role}:{w}" for role in roles for w in where)


IN = callers(where="in")
EVERYONE = callers()


def only(roles, yes: int, no: int) -> dict:
    """``yes`` for these roles, ``no`` for the rest."""
    return {**dict.fromkeys(roles, yes), "*": no}


def statuses(in_, out, anon: int) -> dict[str, int]:
    """The status per caller; ``in_``/``out``: one status for every role, or ``{role: status, "*": rest}``."""
    table = {}
    for where, spec in (("in", in_), ("out", out)):
        for role in ROLES:
            table[f"{role}:{where}"] = spec if isinstance(spec, int) else spec.get(role, spec["*"])
    table[ANON] = anon
    return table


# --- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    method: str
    path: str  # {placeholders} name objects of the world (see build_world)
    expect: dict[str, int]
    via: str = "api"  # "api": bearer token; "session": signed-in browser
    body: dict | None = None
    # (placeholder, callers): the object's id appears in the 200 answers of these callers, in no other.
    shows: tuple[tuple[str, frozenset[str]], ...] = ()
    # Out-of-site callers get exactly the answer they get when this object does not exist.
    hidden: tuple[str, ...] = ()
    # (check(world) -> bool, callers): the call changed the world for these callers only.
    effect: tuple[Callable, frozenset[str]] | None = None
    label: str = ""

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}" + (f" [{self.label}]" if self.label else "")


def api(method, path, in_, out=None, *, anon=401, **kw) -> Row:
    return Row(method, path, statuses(in_, in_ if out is None else out, anon), **kw)


def page(method, path, in_, out=None, *, anon=302, **kw) -> Row:
    return Row(method, path, statuses(in_, in_ if out is None else out, anon), via="session", **kw)


def job_body(asset="{asset}", task="{task}"):
    return {"script": "{script_hello}", "asset": asset, "psa_task_id": task}


def batch_body(asset="{asset}", task="{task}"):
    return {"script": "{script_hello}", "assets": [asset], "psa_task_id": task}


AUTHORITY_CASE = {"title": "Patch Tuesday", "status": "approved", "site": "alpha"}
AUTHORITY_TASK = {"case": "{case}", "title": "Run fix", "status": "approved"}


def _console_token(w) -> bool:
    return ApiToken.objects.filter(name="console matrix").exists()


def _new_job(w) -> bool:
    return ScriptJob.objects.filter(asset_id=w.ids["asset"]).exclude(pk__in=w.jobs).exists()


def _site_switch(w) -> bool:
    return KillSwitch.objects.filter(scope="site", site_id=w.ids["site"], released_at__isnull=True).exists()


def _switch_released(w) -> bool:
    return KillSwitch.objects.filter(pk=w.ids["switch"], released_at__isnull=False).exists()


def _new_export(w) -> bool:
    return EvidenceExport.objects.exclude(pk=w.ids["export"]).exists()


def _job_decided(w) -> bool:
    return ScriptJob.objects.filter(pk=w.ids["job_waiting"], status="queued").exists()


def _batch_resumed(w) -> bool:
    return not Batch.objects.filter(pk=w.ids["batch"], status="halted").exists()


def _granted(w) -> bool:
    return access.may_see_site(get_user_model().objects.get(username="technician-out"), w.ids["site"])


def _draft_approved(w) -> bool:
    return Script.objects.filter(pk=w.ids["script_draft"], approval_status="approved").exists()


ROWS = [
    # --- plumbing: API root, schema, docs, signing key
    api("GET", "/api/v1/", 200),
    api("GET", "/api/schema/", 200),
    api("GET", "/api/docs/", 200, anon=302),  # a browser without a session is sent to sign in
    api("GET", "/api/v1/evidence/signing-key/", 200),
    # --- inventory
    api("GET", "/api/v1/sites/", 200, shows=(("site", IN),)),
    api("GET", "/api/v1/sites/{site}/", 200, 404, hidden=("site",)),
    api("GET", "/api/v1/assets/", 200, shows=(("asset", IN),)),
    api("GET", "/api/v1/assets/{asset}/", 200, 404, hidden=("asset",)),
    api("GET", "/api/v1/agents/", 200, shows=(("agent", IN),)),
    api("GET", "/api/v1/agents/{agent}/", 200, 404, hidden=("agent",)),
    api(
        "POST",
        "/api/v1/agents/{agent}/revoke/",
        only(MANAGE_AGENTS, 200, 403),
        404,
        body={"reason": "laptop lost"},
        hidden=("agent",),
    ),
    api("POST", "/api/v1/agents/{agent}/rotate/", only(MANAGE_AGENTS, 200, 403), 404, hidden=("agent",)),
    # --- authority. A PUT names the PSA's own id: upserting an id that exists in a site the caller
    # may not use must fail (it cannot be created again), so those rows are not `hidden`.
    api("GET", "/api/v1/psa/cases/{case}/", 200, 404, hidden=("case",)),
    api(
        "PUT",
        "/api/v1/psa/cases/{case}/",
        only(MANAGE_AUTHORITY, 200, 403),
        only(MANAGE_AUTHORITY, 400, 403),
        body=AUTHORITY_CASE,
        label="existing",
    ),
    # Upserting alpha's case into beta: beta's callers learn only that the id is taken.
    api(
        "PUT",
        "/api/v1/psa/cases/{case}/",
        only(MANAGE_AUTHORITY, 400, 403),
        body={**AUTHORITY_CASE, "site": "beta"},
        label="into beta",
    ),
    api(
        "PUT",
        "/api/v1/psa/cases/{new_id}/",
        only(MANAGE_AUTHORITY, 201, 403),
        only(MANAGE_AUTHORITY, 400, 403),
        body=AUTHORITY_CASE,
        label="new",
    ),
    api("GET", "/api/v1/psa/cases/{case}/evidence/", 200, 404, shows=(("evidence", IN),), hidden=("case",)),
    api("GET", "/api/v1/psa/tasks/{task}/", 200, 404, hidden=("task",)),
    api(
        "PUT",
        "/api/v1/psa/tasks/{task}/",
        only(MANAGE_AUTHORITY, 200, 403),
        only(MANAGE_AUTHORITY, 400, 403),
        body=AUTHORITY_TASK,
        hidden=("case",),
        label="existing",
    ),
    api(
        "PUT",
        "/api/v1/psa/tasks/{new_id}/",
        only(MANAGE_AUTHORITY, 201, 403),
        only(MANAGE_AUTHORITY, 400, 403),
        body=AUTHORITY_TASK,
        hidden=("case",),
        label="new",
    ),
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
    # --- every kind of job
    api("GET", "/api/v1/jobs/", 200, shows=(("job_done", IN),)),
    api("GET", "/api/v1/jobs/?psa_case={case}&kind=script", 200, shows=(("job_done", IN),), hidden=("case",)),
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
    # --- batches: a halted one in alpha, requested by a third party
    api("GET", "/api/v1/batches/{batch}/", 200, 404, hidden=("batch",)),
    api(
        "POST",
        "/api/v1/batches/{batch}/resume/",
        only(APPROVE, 200, 403),
        404,
        hidden=("batch",),
        effect=(_batch_resumed, callers(APPROVE, "in")),
    ),
    # --- evidence
    api("GET", "/api/v1/evidence/", 200, shows=(("evidence", IN),)),
    api("GET", "/api/v1/evidence/?asset={asset}", 200, shows=(("evidence", IN),), hidden=("asset",)),
    api("GET", "/api/v1/evidence/?psa_case={case}", 200, shows=(("evidence", IN),), hidden=("case",)),
    api("GET", "/api/v1/evidence/?psa_task={task}", 200, shows=(("evidence", IN),), hidden=("task",)),
    api("GET", "/api/v1/evidence/{evidence}/", 200, 404, hidden=("evidence",)),
    api("GET", "/api/v1/evidence/{evidence}/content/", 200, 404, hidden=("evidence",)),
    # An export is its requester's alone (here compliance:in's), whoever else may see its site.
    api("GET", "/api/v1/evidence/exports/", 200, shows=(("export", frozenset({"compliance:in"})),)),
    api("GET", "/api/v1/evidence/exports/{export}/", only(("compliance",), 200, 404), 404, hidden=("export",)),
    api(
        "GET",
        "/api/v1/evidence/exports/{export}/download/",
        only(("compliance",), 200, 404),
        404,
        hidden=("export",),
    ),
    api(
        "POST",
        "/api/v1/evidence/exports/",
        only(EXPORT_EVIDENCE, 202, 403),
        only(EXPORT_EVIDENCE, 400, 403),
        body={"site": "alpha"},
    ),
    api(
        "POST",
        "/api/v1/evidence/exports/",
        only(EXPORT_EVIDENCE, 202, 403),
        only(EXPORT_EVIDENCE, 400, 403),
        body={"assets": ["{asset}"]},
        hidden=("asset",),
        label="by asset",
    ),
    api("GET", "/api/v1/evidence/legal-holds/", 200, shows=(("hold", IN),)),
    api("GET", "/api/v1/evidence/legal-holds/{hold}/", 200, 404, hidden=("hold",)),
    api(
        "POST",
        "/api/v1/evidence/legal-holds/",
        only(MANAGE_LEGAL_HOLDS, 201, 403),
        only(MANAGE_LEGAL_HOLDS, 400, 403),
        body={"site": "alpha", "reason": "litigation"},
    ),
    api(
        "POST",
        "/api/v1/evidence/legal-holds/",
        only(MANAGE_LEGAL_HOLDS, 201, 403),
        only(MANAGE_LEGAL_HOLDS, 400, 403),
        body={"psa_case": "{case}", "reason": "litigation"},
        hidden=("case",),
        label="by PSA case",
    ),
    api(
        "POST",
        "/api/v1/evidence/legal-holds/{hold}/release/",
        only(MANAGE_LEGAL_HOLDS, 200, 403),
        404,
        body={"reason": "settled"},
        hidden=("hold",),
    ),
    # --- kill switches: an asset switch in alpha, and a released global one everybody sees
    api("GET", "/api/v1/kill-switches/", 200, shows=(("switch", IN), ("global_switch", EVERYONE))),
    api("GET", "/api/v1/kill-switches/{switch}/", 200, 404, hidden=("switch",)),
    api("GET", "/api/v1/kill-switches/{global_switch}/", 200, label="global"),
    api(
        "POST",
        "/api/v1/kill-switches/",
        only(ENGAGE_KILL_SWITCH, 201, 403),
        only(ENGAGE_KILL_SWITCH, 400, 403),
        body={"scope": "site", "target": "alpha", "reason": "matrix"},
        label="site",
    ),
    api(
        "POST",
        "/api/v1/kill-switches/",
        only(ENGAGE_KILL_SWITCH, 201, 403),
        only(ENGAGE_KILL_SWITCH, 400, 403),
        body={"scope": "asset", "target": "{asset}", "reason": "matrix"},
        hidden=("asset",),
        label="asset",
    ),
    # Global needs every site; every matrix caller holds one.
    api("POST", "/api/v1/kill-switches/", 403, body={"scope": "global", "reason": "matrix"}, label="global"),
    api(
        "POST",
        "/api/v1/kill-switches/{switch}/release/",
        only(APPROVE, 200, 403),
        404,
        body={"reason": "clear"},
        hidden=("switch",),
    ),
    api(
        "POST",
        "/api/v1/kill-switches/{global_switch}/release/",
        403,  # releasing a global switch needs every site: these callers hold one each
        body={"reason": "again"},
        label="global, already released",
    ),
    # --- API tokens: each caller sees and revokes its own; a third party's is not there for it (the
    # world's admins hold one site each: every token is an admin's over every site only)
    api("GET", "/api/v1/tokens/", 200, shows=(("token_other", frozenset()),)),
    api("GET", "/api/v1/tokens/{token_other}/", 404),
    api("POST", "/api/v1/tokens/{token_other}/revoke/", 404, body={"reason": "matrix"}),
    # --- the agent protocol: a role's token is no agent credential
    api("POST", "/api/v1/agent/heartbeat/", 401, body={"capacity": 1}),
    api("POST", "/api/v1/agent/results/", 401, body={"instruction_id": "{new_id}"}),
    api("POST", "/api/v1/agent/heartbeat/", 401, body={"capacity": 1, "wait": 1}, label="held"),
    page("POST", "/api/v1/agent/heartbeat/", 401, anon=401, body={"capacity": 1}, label="session"),
    # Enrolment is authorised by an enrolment token alone, never by a role.
    api("POST", "/api/v1/agent/enroll/", 403, anon=403, body={"token": "enr_nope", "facts": {"hostname": "x"}}),
    # --- console
    page("GET", "/", 302),
    page("GET", "/console/", 200, shows=(("job_done", IN),)),
    page("GET", "/console/jobs/script/{job_done}/", 200, 404, hidden=("job_done",)),
    page("GET", "/console/batches/{batch}/", 200, 404, hidden=("batch",)),
    page("GET", "/console/jobs/script/{job_done}/fragment/", 200, 404, hidden=("job_done",)),
    page("GET", "/console/jobs/patch/{job_done}/", 404, label="unknown kind"),
    page("GET", "/console/scripts/run/", 200, shows=(("asset", IN), ("task", IN))),
    # A form page answers 200 with the form's errors when refused, 302 to the new job when done.
    page(
        "POST",
        "/console/scripts/run/",
        only(REQUEST_JOBS, 302, 200),
        200,
        body={"script": "{script_hello}", "asset": "{asset}", "psa_task": "{task}"},
        effect=(_new_job, callers(REQUEST_JOBS, "in")),
    ),
    page("GET", "/console/kill-switches/", 200, shows=(("switch", IN),)),
    page(
        "POST",
        "/console/kill-switches/",
        only(ENGAGE_KILL_SWITCH, 302, 200),
        200,
        body={"scope": "site", "target": "alpha", "reason": "console matrix"},
        effect=(_site_switch, callers(ENGAGE_KILL_SWITCH, "in")),
    ),
    page("GET", "/console/kill-switches/banner/", 200, shows=(("switch", IN),)),
    page(
        "POST",
        "/console/kill-switches/{switch}/release/",
        302,
        404,
        body={"reason": "clear"},
        hidden=("switch",),
        effect=(_switch_released, callers(APPROVE, "in")),
    ),
    page("GET", "/console/kill-switches/{switch}/release/", 405, label="GET"),
    # A person's own tokens: anyone signed in (admins and approvers past their second factor)
    page("GET", "/console/tokens/", 200, shows=(("token_other", frozenset()),)),
    page("POST", "/console/tokens/", 200, body={"name": "console matrix"}, effect=(_console_token, EVERYONE)),
    page("POST", "/console/tokens/{token_other}/revoke/", 404),
    page("GET", "/console/tokens/{token_other}/revoke/", 405, label="GET"),
    page("GET", "/console/evidence/exports/", 200, shows=(("export", frozenset({"compliance:in"})),)),
    page(
        "POST",
        "/console/evidence/exports/",
        only(EXPORT_EVIDENCE, 302, 200),
        200,
        body={"site": "alpha"},
        effect=(_new_export, callers(EXPORT_EVIDENCE, "in")),
    ),
    # --- admin: staff only (everyone else is sent to the admin's sign-in page)
    page("GET", "/admin/", only(STAFF, 200, 302)),
    page(
        "GET",
        "/admin/approvals/",
        only(STAFF, 200, 302),
        shows=(("job_waiting", callers(STAFF, "in")), ("script_draft", callers(STAFF))),
    ),
    page(
        "POST",
        "/admin/approvals/",
        302,
        body={"kind": "script", "id": "{job_waiting}", "decision": "approve"},
        hidden=("job_waiting",),
        effect=(_job_decided, callers(APPROVE, "in")),
        label="job",
    ),
    page(
        "POST",
        "/admin/approvals/",
        302,
        body={"kind": "script_version", "id": "{script_draft}", "decision": "approve"},
        effect=(_draft_approved, callers(APPROVE)),
        label="script version",
    ),
    page("GET", "/admin/scripting/scriptjob/", only(STAFF, 200, 302), shows=(("job_done", callers(STAFF, "in")),)),
    # A site's grants: staff of the site may look, only an admin may change them.
    page("GET", "/admin/inventory/site/{site}/access/", only(STAFF, 200, 302), only(STAFF, 404, 302), hidden=("site",)),
    page(
        "POST",
        "/admin/inventory/site/{site}/access/",
        {"admin": 302, "approver": 403, "*": 302},
        only(STAFF, 404, 302),
        body={"username": "technician-out", "action": "grant"},
        hidden=("site",),
        effect=(_granted, callers(MANAGE_ACCESS, "in")),
    ),
    # The admin answers an object it will not show with a redirect to its index, as for no object.
    page("GET", "/admin/scripting/scriptjob/{job_done}/change/", only(STAFF, 200, 302), 302, hidden=("job_done",)),
]


# --- the world ---------------------------------------------------------------------------------


@dataclass
class World:
    ids: dict[str, str]
    jobs: list[str]
    storage: str
    agent_auth: str
    tokens: dict[str, str] = field(default_factory=dict)  # caller -> Authorization header
    cookies: dict[str, dict] = field(default_factory=dict)  # caller -> its signed-in session's cookies
    # One client of each kind for every caller: the credential or the cookies are the caller's own at
    # each call (loading the middleware chain once per client would cost more than the whole table).
    api: APIClient = field(default_factory=APIClient)
    browser: Client = field(default_factory=Client)

    def client(self, key: str, via: str):
        if via == "api":
            self.api.cookies = SimpleCookie()
            self.api.credentials(**({"HTTP_AUTHORIZATION": self.tokens[key]} if key in self.tokens else {}))
            return self.api
        self.browser.cookies = SimpleCookie()
        for name, value in self.cookies.get(key, {}).items():
            self.browser.cookies[name] = value
        return self.browser


def _person(name: str, role: str, sites):
    user = access_services.ensure_user_with_role(name, role)
    for site in sites:
        access_services.grant_site(user, site)  # None: every site
    return user


def build_world(storage: str) -> World:
    alpha = inventory.get_or_create_site("alpha")
    beta = inventory.get_or_create_site("beta")
    # Third parties with every site: they author, request, engage, so four eyes never gets in the way.
    psa = _person("w-psa", "psa", [None])
    author = _person("w-author", "technician", [None])
    boss = _person("w-boss", "approver", [None])
    root = _person("w-root", "admin", [None])

    agent, agent_auth = make_agent(alpha, "alpha-1")
    spare, _ = make_agent(alpha, "alpha-2")
    other, _ = make_agent(beta, "beta-1")
    task = approved_authority(alpha, psa)
    approved_authority(beta, psa)

    hello = approved_script(author, boss, name="hello")
    gated = approved_script(author, boss, name="gated", content="echo gated\n", requires_approval=True)
    draft = scripting.create_script(author, name="draft", language="sh", content="echo draft\n")
    priv = scripting.create_script(author, name="priv", language="sh", content="id -u\n", privileged=True)

    job_done = scripting.create_script_job(psa, script_id=hello.pk, asset_id=agent.asset_id, psa_task_id=task.pk)
    leased = heartbeat(agent_auth)["instructions"]
    assert report(agent_auth, json.loads(leased[0]["payload"])["instruction_id"]).status_code == 201
    job_waiting = scripting.create_script_job(psa, script_id=gated.pk, asset_id=agent.asset_id, psa_task_id=task.pk)
    assert job_waiting.status == "awaiting_approval"
    proof = RmmEvidence.objects.get(related_entity="script_job", related_id=job_done.pk)

    # An engaged switch on another asset of alpha (so jobs on alpha-1 may still be created).
    switch = kill_switches.engage(psa, scope="asset", target=str(spare.asset_id), reason="matrix asset switch")
    global_switch = kill_switches.engage(root, scope="global", target=None, reason="matrix global switch")
    kill_switches.release(boss, global_switch, "drill over")
    # A batch in alpha halted by its failing canary (after the global switch, which would stop it).
    plan = {"canary": 1, "failure_threshold_percent": 0}
    (batch_job,) = scripting.create_script_jobs(
        psa, script_id=hello.pk, psa_task_id=task.pk, asset_ids=[agent.asset_id], plan=plan
    )
    leased = heartbeat(agent_auth)["instructions"]
    assert report(agent_auth, json.loads(leased[0]["payload"])["instruction_id"], exit_code=1).status_code == 201
    hold = evidence.place_hold(root, site_ref="alpha", reason="matrix hold")
    access_services.issue_token(author, name="a third party's")
    token_other = ApiToken.objects.get(user=author, name="a third party's")

    world = World(
        ids={
            "site": str(alpha.pk),
            "asset": str(agent.asset_id),
            "other_asset": str(other.asset_id),
            "agent": str(agent.pk),
            "case": str(task.case_id),
            "task": str(task.pk),
            "new_id": str(uuid.uuid4()),
            "script_hello": str(hello.pk),
            "script_draft": str(draft.pk),
            "script_priv": str(priv.pk),
            "job_done": str(job_done.pk),
            "job_waiting": str(job_waiting.pk),
            "evidence": str(proof.pk),
            "switch": str(switch.pk),
            "global_switch": str(global_switch.pk),
            "hold": str(hold.pk),
            "token_other": str(token_other.pk),
            "batch": str(batch_job.batch_id),
        },
        jobs=[str(job_done.pk), str(job_waiting.pk), str(batch_job.pk)],
        storage=storage,
        agent_auth=agent_auth,
    )
    for role in ROLES:
        for where, site in (("in", alpha), ("out", beta)):
            user = _person(f"{role}-{where}", role, [site])
            key = f"{role}:{where}"
            world.tokens[key] = f"Bearer {access_services.issue_token(user)}"
            world.browser.cookies = SimpleCookie()
            if role in STAFF:
                otp_login(world.browser, user)
            else:
                world.browser.force_login(user)
            world.cookies[key] = {name: morsel.value for name, morsel in world.browser.cookies.items()}
            if key == "compliance:in":
                export = exports.request_export(user, site="alpha")
                assert exports.run_export(str(export.pk)) == "done"
                world.ids["export"] = str(export.pk)
    return world


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker, tmp_path_factory):
    """Built once; rolled back when the module ends (the history refuses DELETE, so no cleanup by delete)."""
    storage = str(tmp_path_factory.mktemp("matrix-evidence"))
    with django_db_blocker.unblock(), transaction.atomic():
        with override_settings(RMM_HEARTBEAT_MIN_SPACING_SECONDS=0, STORAGES=_storages(storage)):
            built = build_world(storage)
        yield built
        transaction.set_rollback(True)


@pytest.fixture(autouse=True)
def _world_storage(_test_settings, settings, world):
    """conftest gives each test its own evidence folder; the world's blobs and bundles are in the module's."""
    settings.STORAGES = _storages(world.storage)


def _storages(location: str) -> dict:
    stores = django_settings.STORAGES
    return {
        **stores,
        "default": {**stores["default"], "OPTIONS": {**stores["default"]["OPTIONS"], "location": location}},
    }


# --- running a row -----------------------------------------------------------------------------


@contextmanager
def rolled_back():
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


def fill(value, ids: dict):
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, list):
        return [fill(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, ids) for k, v in value.items()}
    return value


def send(w: World, key: str, row: Row, ids: dict):
    client = w.client(key, row.via)
    call = getattr(client, row.method.lower())
    path, body = fill(row.path, ids), fill(row.body, ids)
    if row.via == "api":
        response = call(path, body, format="json") if body is not None else call(path)
    elif row.path.startswith("/api/v1/agent/"):
        response = call(path, json.dumps(body), content_type="application/json")
    else:
        response = call(path, body) if body is not None else call(path)
    # A download is read to its end: the test client then closes it (and its file) by itself.
    content = b"".join(response.streaming_content) if response.streaming else response.content
    return response.status_code, content.decode(errors="replace"), response.get("Location", "")


def history_problems(key: str, row: Row, status: int, events) -> list[str]:
    """Every change of state appends an event, every refusal a ``refused.*`` one (Laws 5 and 9)."""
    actions = list(events.values_list("action", flat=True))
    changes = [action for action in actions if not action.startswith("refused.")]
    if 200 <= status < 300 and row.method != "GET" and not changes:
        return [f"{key}: answered {status} but recorded no change"]
    if not 200 <= status < 300 and changes:
        return [f"{key}: answered {status} but recorded {changes}"]
    if status == 403 and len(changes) == len(actions):
        return [f"{key}: refused with 403 but recorded no refusal"]
    return []


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_matrix(row: Row, world: World, db):
    got, problems = {}, []
    for key in CALLERS:
        with rolled_back():
            head = HistoryEvent.objects.aggregate(head=Max("sequence"))["head"]
            status, content, location = send(world, key, row, world.ids)
            got[key] = status
            if row.via == "api":
                problems += history_problems(key, row, status, HistoryEvent.objects.filter(sequence__gt=head))
            if status == 200:
                for name, seen_by in row.shows:
                    if (world.ids[name] in content) != (key in seen_by):
                        problems.append(f"{key}: {name} {'missing from' if key in seen_by else 'shown in'} the answer")
            if row.effect is not None:
                check, by = row.effect
                if check(world) != (key in by):
                    problems.append(f"{key}: {'no effect' if key in by else 'unexpected effect'}")
        if key.endswith(":out"):
            for name in row.hidden:
                fake = str(uuid.uuid4())
                with rolled_back():
                    nowhere = send(world, key, row, {**world.ids, name: fake})
                real = (status, content.replace(world.ids[name], "<id>"), location.replace(world.ids[name], "<id>"))
                if real != (nowhere[0], nowhere[1].replace(fake, "<id>"), nowhere[2].replace(fake, "<id>")):
                    problems.append(f"{key}: {name} of another site answers {real[:2]}, a missing one {nowhere[:2]}")
    wrong = [f"{key}: expected {row.expect[key]}, got {got[key]}" for key in CALLERS if got[key] != row.expect[key]]
    assert not wrong + problems, "\n".join(wrong + problems)


def test_an_agent_credential_is_what_the_agent_protocol_takes(world, db):
    client = Client()
    auth = {"HTTP_AUTHORIZATION": world.agent_auth, "content_type": "application/json"}
    with rolled_back():
        assert client.post("/api/v1/agent/heartbeat/", json.dumps({"capacity": 1}), **auth).status_code == 200
    with rolled_back():
        unknown = client.post("/api/v1/agent/results/", json.dumps({"instruction_id": str(uuid.uuid4())}), **auth)
        assert unknown.status_code in (400, 404), unknown.content  # authenticated: judged on the body
    with rolled_back():
        held = client.post("/api/v1/agent/heartbeat/", json.dumps({"capacity": 1, "wait": 1}), **auth)
        assert (held.status_code, held.json()["instructions"]) == (200, [])


def test_role_groups_match_access():
    """The table's role groups are rmm/access.py's capabilities; change one, change the table."""
    assert set(access.ROLES) == set(ROLES)
    written = {
        "approve": APPROVE,
        "manage_authority": MANAGE_AUTHORITY,
        "author_scripts": AUTHOR_SCRIPTS,
        "request_jobs": REQUEST_JOBS,
        "export_evidence": EXPORT_EVIDENCE,
        "manage_legal_holds": MANAGE_LEGAL_HOLDS,
        "manage_agents": MANAGE_AGENTS,
        "engage_kill_switch": ENGAGE_KILL_SWITCH,
        "manage_access": MANAGE_ACCESS,
        "view": ROLES,
        "view_evidence": ROLES,
    }
    assert {cap: frozenset(roles) for cap, roles in written.items()} == access.CAPABILITIES


# --- completeness ------------------------------------------------------------------------------

GUARDED = ("api/", "console/", "admin/approvals/")


def _routes(patterns, prefix=""):
    """(route, URLPattern) for every pattern, routes joined the way ResolverMatch.route is."""
    for pattern in patterns:
        part = str(pattern.pattern)
        route = prefix + (part.removeprefix("^") if prefix else part)
        if isinstance(pattern, URLResolver):
            yield from _routes(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern):
            yield route, pattern


def _methods(callback) -> set[str] | None:
    """A DRF view's methods; None for a plain Django view (one row is enough)."""
    if getattr(callback, "actions", None):
        return {method.upper() for method in callback.actions}
    cls = getattr(callback, "cls", None)
    if cls is None:
        return None
    return {m.upper() for m in cls.http_method_names if m not in ("options", "head", "trace") and hasattr(cls, m)}


def uncovered(urlpatterns, rows) -> list[str]:
    """Guarded routes (and methods of DRF routes) that no row reaches."""
    known = {}
    for route, pattern in _routes(urlpatterns):
        if route.startswith(GUARDED) and "(?P<format>" not in route and "<drf_format_suffix:format>" not in route:
            known[route] = _methods(pattern.callback)

    class AnyId(dict):
        def __missing__(self, key):
            return str(uuid.uuid4())

    covered: dict[str, set[str]] = {}
    for row in rows:
        match = resolve(row.path.format_map(AnyId()).split("?")[0])
        covered.setdefault(match.route, set()).add(row.method)
    missing = []
    for route, methods in sorted(known.items()):
        if route not in covered:
            missing.append(f"/{route} (no row)")
        elif methods is not None and methods - {"HEAD"} - covered[route]:
            missing.append(f"/{route} {sorted(methods - {'HEAD'} - covered[route])}")
    return missing


def test_every_route_has_a_row():
    """A new endpoint or page without a row in ROWS fails here, with its path.

    Format-suffix twins (``….json``) are skipped: the router makes one for every route, served by
    the same view with the same checks (one row above shows it). The DRF API root has its row."""
    missing = uncovered(get_resolver().url_patterns, ROWS)
    assert not missing, "routes without a row in the authorization matrix:\n" + "\n".join(missing)


def test_the_guard_names_what_it_misses():
    from django.urls import path
    from rest_framework.decorators import api_view

    @api_view(["GET", "POST"])
    def gadget(request):
        raise AssertionError("never called")

    extra = [path("api/v1/gadgets/", gadget), path("console/gadgets/", lambda request: None)]
    without_post = [row for row in ROWS if row.id != "POST /api/v1/scripts/"]
    assert uncovered(get_resolver().url_patterns + extra, without_post) == [
        "/api/v1/gadgets/ (no row)",
        "/api/v1/scripts/$ ['POST']",
        "/console/gadgets/ (no row)",
    ]
