"""Law 7 as a table, the harness: every API endpoint and console page, for every role, in-site and
out-of-site. Each app's rows are in its own folder, ``tests/<app>/test_authorization.py`` (``ROWS``
there, run by its ``test_matrix``); ``tests/project/test_authorization.py`` holds the completeness
check over the rows of every app (:func:`every_row`).

One world is built once for each such module (two sites; the objects under test live in ``alpha``),
inside a transaction that is rolled back when the module ends. Each test is one row: it calls the
row's endpoint as each of the fifteen callers (seven roles granted ``alpha``, the same seven granted
only ``beta``, and anonymous), each call in its own savepoint that is rolled back, so every caller
meets the same world and a state-changing POST is deterministic. The row states the exact status
each caller gets; where it says so, also who sees an object in the answer, what changed, and that
an out-of-site caller cannot tell the object from one that does not exist.

The objects are authored, requested and engaged by third parties (``w-*`` users, every site), so
four eyes never refuses a matrix caller; four eyes has its own tests.

API rows call with the role's bearer token; console and admin rows with a session (a verified
second factor for admins and approvers, ``force_login`` for the others). The completeness check
fails on any URL under /api/, /console/ or /admin/approvals/ (or any method of a DRF route) that
has no row in any app's table.

Registered for every test folder by tests/conftest.py (the ``matrix`` fixture).
"""

from __future__ import annotations

import importlib
import io
import json
import re
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import transaction
from django.db.models import Max
from django.test import Client, override_settings
from django.urls import Resolver404, URLPattern, URLResolver, resolve
from rest_framework.test import APIClient

from deployment import services as deployment
from evidence import exports
from evidence import services as evidence
from evidence.models import RmmEvidence
from profiles import assignments
from profiles import services as profiles
from rmm.access import services as access_services
from rmm.access.models import ApiToken
from rmm.engine.services import kill_switches
from rmm.history.models import HistoryEvent
from rmm.inventory import services as inventory
from rmm.outbox import services as outbox
from rmm.siem import services as siem
from scripting import services as scripting
from sessions import services as sessions
from tests.helpers import approved_authority, approved_script, heartbeat, make_agent, otp_login, report
from tests.support.profiles import approved_key, audited, enforcement_row

# --- who ---------------------------------------------------------------------------------------

ROLES = ("admin", "technician", "approver", "compliance", "psa", "edr", "scanner")
ANON = "anonymous"
CALLERS = tuple(f"{role}:{where}" for where in ("in", "out") for role in ROLES) + (ANON,)

# What each role may do, written out (the test is the spec); test_role_groups_match_access
# (tests/access/test_authorization.py) holds them to rmm/access.py CAPABILITIES.
APPROVE = ("admin", "approver")
MANAGE_AUTHORITY = ("admin", "psa")
AUTHOR_SCRIPTS = ("admin", "technician")
REQUEST_JOBS = ("admin", "technician", "psa", "edr", "scanner")
EXPORT_EVIDENCE = ("admin", "compliance")
MANAGE_LEGAL_HOLDS = ("admin", "compliance")
MANAGE_AGENTS = ("admin",)
MANAGE_ACCESS = ("admin",)
IMPORT_ADVISORIES = ("admin", "scanner")
REPORT_FINDINGS = ("admin", "scanner")
MANAGE_INTEGRATIONS = ("admin",)
REQUEST_CONTAINMENT = ("admin", "edr")
OPEN_SESSIONS = ("admin", "technician")
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
    approved_key(author, boss, name="matrix.line")
    pending_key = approved_key(author, boss, name="matrix.pending", approve=False)
    profile = profiles.create_profile(
        author,
        name="matrix",
        profile_type="baseline",
        items=[{"config_key": "matrix.line", "parameters": {"path": "/p", "key": "k"}, "comparison": "absent"}],
    )

    package = deployment.register_upload(
        author,
        upload=io.BytesIO(b"matrix package\n"),
        name="matrix-pkg",
        version="1.0",
        installer_type="deb",
        silent_args="",
        detection={},
        uninstall_args="",
    )
    enforcing = profiles.create_profile(
        author,
        name="matrix-enforce",
        profile_type="baseline",
        items=[{"config_key": "matrix.line", "parameters": {"path": "/p", "key": "k"}, "comparison": "absent",
                "enforcement_mode": "enforce"}],
    )  # fmt: skip
    assignment = assignments.create_assignment(
        author, profile_id=profile.pk, asset_id=agent.asset_id, psa_task_id=task.pk
    )  # fmt: skip
    waiting = assignments.create_assignment(author, profile_id=enforcing.pk, site_id=alpha.pk, psa_task_id=task.pk)
    assert (assignment.status, waiting.status) == ("active", "awaiting_approval")

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
    audit_ids = audited(psa, assignment, agent_auth)  # the assignment's audit and its drift
    audit_ids["enforcement_job"] = enforcement_row(assignment, audit_ids["audit_job"], author, boss)
    hold = evidence.place_hold(root, site_ref="alpha", reason="matrix hold")
    access_services.issue_token(author, name="a third party's")
    token_other = ApiToken.objects.get(user=author, name="a third party's")
    webhook, _ = outbox.create_webhook(root, url="http://127.0.0.1:9/matrix", event_types=["*"], sites=["alpha"])
    webhook_delivery = outbox.ping(root, webhook)
    siem_destination = siem.create_destination(root, kind="syslog", address="127.0.0.1:9", sites=["alpha"])
    session_policy = sessions.propose_policy(root, site="alpha", approval_required=True)

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
            "config_key_pending": str(pending_key.pk),
            "config_key": str(profile.current_revision.items.get().config_key_id),
            "profile": str(profile.pk),
            "package_pending": str(package.pk),
            "profile_enforce": str(enforcing.pk),
            "assignment": str(assignment.pk),
            "assignment_waiting": str(waiting.pk),
            "job_done": str(job_done.pk),
            "job_waiting": str(job_waiting.pk),
            "evidence": str(proof.pk),
            "switch": str(switch.pk),
            "global_switch": str(global_switch.pk),
            "hold": str(hold.pk),
            "token_other": str(token_other.pk),
            "batch": str(batch_job.batch_id),
            "job_failed": str(batch_job.pk),
            **audit_ids,
            "webhook": str(webhook.pk),
            "webhook_delivery": str(webhook_delivery.pk),
            "siem_destination": str(siem_destination.pk),
            "session_policy": str(session_policy.pk),
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
            if key == "approver:in":
                world.ids["person"] = str(user.pk)  # the one the People pages change
            if key == "compliance:in":
                export = exports.request_export(user, site="alpha")
                assert exports.run_export(str(export.pk)) == "done"
                world.ids["export"] = str(export.pk)
    return world


@pytest.fixture(scope="module")
def matrix_world(django_db_setup, django_db_blocker, tmp_path_factory):
    """Built once per module; rolled back when the module ends (the history refuses DELETE, so no
    cleanup by delete)."""
    storage = str(tmp_path_factory.mktemp("matrix-evidence"))
    with django_db_blocker.unblock(), transaction.atomic():
        with override_settings(RMM_HEARTBEAT_MIN_SPACING_SECONDS=0, STORAGES=_storages(storage)):
            built = build_world(storage)
        yield built
        transaction.set_rollback(True)


@pytest.fixture
def matrix(_test_settings, settings, matrix_world, db) -> World:
    """The module's world for one test. conftest gives each test its own evidence folder; the world's
    blobs and bundles are in the module's."""
    settings.STORAGES = _storages(matrix_world.storage)
    return matrix_world


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


CSRF_TOKEN = re.compile(r'name="csrfmiddlewaretoken" value="[^"]*"')


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
    # A page's CSRF token (the sign-out form of every console page) is masked afresh on each answer.
    text = CSRF_TOKEN.sub('name="csrfmiddlewaretoken" value=""', content.decode(errors="replace"))
    return response.status_code, text, response.get("Location", "")


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


def check(row: Row, w: World) -> None:
    """Call ``row`` as every caller; fail with every status, leak and effect that the row does not state."""
    got, problems = {}, []
    for key in CALLERS:
        with rolled_back():
            head = HistoryEvent.objects.aggregate(head=Max("sequence"))["head"]
            status, content, location = send(w, key, row, w.ids)
            got[key] = status
            if row.via == "api":
                problems += history_problems(key, row, status, HistoryEvent.objects.filter(sequence__gt=head))
            if status == 200:
                for name, seen_by in row.shows:
                    if (w.ids[name] in content) != (key in seen_by):
                        problems.append(f"{key}: {name} {'missing from' if key in seen_by else 'shown in'} the answer")
            if row.effect is not None:
                effect, by = row.effect
                if effect(w) != (key in by):
                    problems.append(f"{key}: {'no effect' if key in by else 'unexpected effect'}")
        if key.endswith(":out"):
            for name in row.hidden:
                fake = str(uuid.uuid4())
                with rolled_back():
                    nowhere = send(w, key, row, {**w.ids, name: fake})
                real = (status, content.replace(w.ids[name], "<id>"), location.replace(w.ids[name], "<id>"))
                if real != (nowhere[0], nowhere[1].replace(fake, "<id>"), nowhere[2].replace(fake, "<id>")):
                    problems.append(f"{key}: {name} of another site answers {real[:2]}, a missing one {nowhere[:2]}")
    wrong = [f"{key}: expected {row.expect[key]}, got {got[key]}" for key in CALLERS if got[key] != row.expect[key]]
    assert not wrong + problems, "\n".join(wrong + problems)


def ids(rows: list[Row]) -> list[str]:
    return [row.id for row in rows]


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


class _AnyId(dict):
    """Fills every placeholder of a row's path: with a new UUID, or with a number (``number``)."""

    def __init__(self, number: bool) -> None:
        super().__init__()
        self.number = number

    def __missing__(self, key: str) -> str:
        return "1" if self.number else str(uuid.uuid4())


def _route_of(path: str) -> str:
    """The route a row's path reaches, its placeholders filled with any id: a UUID, or a number for
    the rows of a model with integer keys (a person's pages)."""
    try:
        return resolve(path.format_map(_AnyId(number=False)).split("?")[0]).route
    except Resolver404:
        return resolve(path.format_map(_AnyId(number=True)).split("?")[0]).route


def uncovered(urlpatterns, rows) -> list[str]:
    """Guarded routes (and methods of DRF routes) that no row reaches."""
    known = {}
    for route, pattern in _routes(urlpatterns):
        if route.startswith(GUARDED) and "(?P<format>" not in route and "<drf_format_suffix:format>" not in route:
            known[route] = _methods(pattern.callback)

    covered: dict[str, set[str]] = {}
    for row in rows:
        covered.setdefault(_route_of(row.path), set()).add(row.method)
    missing = []
    for route, methods in sorted(known.items()):
        if route not in covered:
            missing.append(f"/{route} (no row)")
        elif methods is not None and methods - {"HEAD"} - covered[route]:
            missing.append(f"/{route} {sorted(methods - {'HEAD'} - covered[route])}")
    return missing


def every_row() -> list[Row]:
    """The rows of every app's table: ``ROWS`` of each ``tests/<app>/test_authorization.py``."""
    rows = []
    for module in sorted(Path(__file__).resolve().parents[1].glob("*/test_authorization.py")):
        rows += importlib.import_module(f"tests.{module.parent.name}.test_authorization").ROWS
    return rows
