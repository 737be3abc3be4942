"""The engine knows no job kind: new kinds (patch, deployment, enforcement, containment) plug in
through the registry without touching rmm/engine/, and the agent stays free of Django. The core's
dependencies point one way (docs/architecture.md, "Layers")."""

import ast
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOMAIN_APPS = {"scripting", "evidence", "profiles", "patching", "deployment", "sessions"}


def imported_modules(folder: Path) -> set[str]:
    names = set()
    for path in [folder] if folder.is_file() else folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
    return names


def test_the_engine_imports_no_domain_app():
    leaks = {name for name in imported_modules(ROOT / "rmm" / "engine") if name.split(".")[0] in DOMAIN_APPS}
    assert leaks == set()


def test_the_core_imports_no_domain_app_for_approvals_or_blobs():
    """Artefact kinds register with the core (script versions from scripting's AppConfig.ready):
    the approval service, the admin approval queue and the blob store name no domain app."""
    core = [
        ROOT / "rmm" / "artefacts",
        ROOT / "rmm" / "console" / "approval_queue.py",
        ROOT / "rmm" / "core" / "blobs.py",
    ]
    leaks = {name for part in core for name in imported_modules(part) if name.split(".")[0] in DOMAIN_APPS}
    assert leaks == set()
    template = (ROOT / "templates" / "admin" / "approval_queue.html").read_text()
    assert "script_version" not in template and "Script version" not in template  # every kind alike


def test_scripting_decides_no_artefact_itself():
    """Four eyes, the privileged tier and the race-free decision are the approval service's."""
    paths = [path for path in (ROOT / "scripting").rglob("*.py") if "migrations" not in path.parts]
    source = "\n".join(path.read_text() for path in paths)
    assert "check_four_eyes" not in source
    assert "approval_status=ApprovalStatus.PENDING" not in source  # the conditional update
    assert "has_perm(" not in source


def test_the_script_version_is_a_registered_artefact_kind():
    from rmm.artefacts import registry
    from scripting.models import Script

    assert registry.get("script_version").model is Script


def test_the_agent_needs_only_the_standard_library_and_cryptography():
    """And websockets, for the remote-session relay alone (rmm_agent/session.py)."""
    import sys

    allowed = set(sys.stdlib_module_names) | {"cryptography", "rmm_agent", "websockets"}
    foreign = {name for name in imported_modules(ROOT / "rmm_agent") if name.split(".")[0] not in allowed}
    assert foreign == set()


def test_the_script_kind_is_registered_with_the_engine():
    from rmm.engine import registry
    from scripting.models import ScriptJob

    assert registry.get("script").model is ScriptJob


PRODUCT = ("rmm", "evidence", "scripting")


def test_the_product_knows_nothing_of_the_benchmark():
    """Bench-only endpoints and middleware come with bench.settings, never with the product's
    settings, URLs or servers."""
    from django.urls import Resolver404, resolve

    from rmm import settings as product

    leaks = {name for app in PRODUCT for name in imported_modules(ROOT / app) if name.split(".")[0] == "bench"}
    assert leaks == set()
    assert not any(name.startswith("bench.") for name in product.MIDDLEWARE + product.RMM_AGENT_TIER_MIDDLEWARE)
    try:
        resolve("/api/v1/agent/bench/stats/", urlconf="rmm.urls")
    except Resolver404:
        pass
    else:
        raise AssertionError("rmm.urls serves the bench's stats")


# The laws that guard a new job and a job's decision, applied by the engine alone
# (rmm/engine/services/creating.py, rmm/engine/services/deciding.py): a domain app that names one
# of these has begun to copy a law.
LAW_MODULES = {"rmm.authority.laws", "rmm.authority.services", "rmm.engine.services.kill_switches"}
LAW_NAMES = {
    "authority_problem",  # Law 1
    "self_authorized",  # the approval gate
    "check_four_eyes",  # Law 8
    "refuse_if_engaged",  # Law 6
    "active_for",
    "active_for_any",
    "record_refusal",  # refusals of a law, recorded in the history
    "Refused",
    "refusals_recorded",
    "lock",  # the history's lock, under which the laws are checked again
}
# The one site selector and the role check: the read side (API querysets, admin, the console's
# form) uses them to show only what the caller may see (Law 7); the write side leaves them to
# the engine.
WRITE_SIDE = {"services.py", "kind.py"}
WRITE_SIDE_LAW_NAMES = {"visible_sites", "can"}


def law_logic_in(package: Path) -> list[str]:
    """Where the modules of ``package`` import a law's module or name one of its functions."""
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        if relative.startswith("migrations/"):
            continue
        names = LAW_NAMES | (WRITE_SIDE_LAW_NAMES if relative in WRITE_SIDE else set())

        def visit(node, function: str = "", relative=relative, names=names) -> None:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                function = node.name
            used = None
            if isinstance(node, ast.Import):
                used = next((alias.name for alias in node.names if alias.name in LAW_MODULES), None)
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
                used = next(iter(sorted(modules & LAW_MODULES)), None) or next(
                    (alias.name for alias in node.names if alias.name in names), None
                )
            elif isinstance(node, ast.Attribute) and node.attr in names:
                used = node.attr
            elif isinstance(node, ast.Name) and node.id in names:
                used = node.id
            if used:
                found.append(f"{relative}:{node.lineno} {function or '<module>'}: {used}")
            for child in ast.iter_child_nodes(node):
                visit(child, function)

        visit(ast.parse(path.read_text()))
    return found


def test_scripting_holds_no_law_of_its_own():
    """A job kind supplies what is its own; authority, visibility, kill switches and the approval
    gate of its jobs are the engine's (issue 13 part 1)."""
    assert law_logic_in(ROOT / "scripting") == []


# The core's layers, lowest first (docs/architecture.md, "Layers"). A module's layer is that of the
# longest prefix naming it. A module imports its own layer and those below, never one above. Each
# app's surfaces (its admin, API, views, commands, tasks and AppConfig) sit above every layer, and
# the composition root above them: only the composition root names a domain app.
LAYERS = [
    ("core", ["rmm.core", "rmm.deploy"]),  # rmm.deploy: `make prod-up`, no model of its own
    (
        "models",
        [
            "rmm.history.models",
            "rmm.inventory.models",
            "rmm.access.models",
            "rmm.keys.models",
            "rmm.keys.store",
            "rmm.outbox.models",
            "rmm.siem.models",
            "rmm.authority.models",
            "rmm.engine.models",
            "rmm.engine.states",
            "rmm.engine.wakeups",
            "rmm.artefacts.registry",
            "rmm.artefacts.states",
            "rmm.artefacts.models",
        ],
    ),
    ("history", ["rmm.history", "rmm.core.api", "rmm.core.blobs"]),  # the two helpers record refusals
    (
        "access, keys, outbox",
        ["rmm.access", "rmm.keys", "rmm.outbox", "rmm.authority.laws", "rmm.engine.events", "rmm.engine.agent_limits"],
    ),
    ("engine", ["rmm.engine", "rmm.inventory"]),  # an agent's presence and revocation end its work
    ("above the engine", ["rmm.authority", "rmm.artefacts", "rmm.signin", "rmm.updates", "rmm.siem"]),
    ("console", ["rmm.console"]),
]
SURFACES = {"admin", "api", "views", "agent_views", "urls", "consumers", "routing", "apps", "management", "tasks"}
COMPOSITION = {"rmm", "rmm.settings", "rmm.urls", "rmm.asgi"}
SURFACE_LAYER, COMPOSITION_LAYER = len(LAYERS), len(LAYERS) + 1


def layer_of(module: str) -> int | None:
    if module in COMPOSITION:
        return COMPOSITION_LAYER
    parts = module.split(".")
    if parts[1] != "core" and SURFACES & set(parts[2:]):
        return SURFACE_LAYER
    found = [
        (len(prefix), index)
        for index, (_, prefixes) in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    return max(found)[1] if found else None


def layer_name(layer: int) -> str:
    return {SURFACE_LAYER: "surfaces", COMPOSITION_LAYER: "composition"}.get(layer) or LAYERS[layer][0]


def layer_violations(root: Path) -> list[str]:
    """Every import under ``root``/rmm that points up a layer or names a domain app, and every module
    that has no layer."""
    modules = {}
    for path in (root / "rmm").rglob("*.py"):
        if "migrations" in path.parts:
            continue
        name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    found = []
    for name, path in sorted(modules.items()):
        own = layer_of(name)
        if own is None:
            found.append(f"{name}: in no layer")
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [
                    f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                    for alias in node.names
                ]
            else:
                continue
            for target in targets:
                top = target.split(".")[0]
                if top in DOMAIN_APPS and own != COMPOSITION_LAYER:
                    found.append(f"{name}:{node.lineno} imports the domain app {target}")
                elif top == "rmm" and target != "rmm":
                    while target not in modules:
                        target = target.rpartition(".")[0]
                    theirs = layer_of(target)
                    if theirs is not None and theirs > own:
                        found.append(
                            f"{name}:{node.lineno} ({layer_name(own)}) imports {target} ({layer_name(theirs)})"
                        )
    return found


def test_the_core_depends_one_way():
    """Issue 13 part 8: no module of rmm/ imports a higher layer or a domain app."""
    assert layer_violations(ROOT) == []


def test_the_layer_check_catches_an_upward_import_and_a_domain_app(tmp_path):
    shutil.copytree(ROOT / "rmm", tmp_path / "rmm", ignore=shutil.ignore_patterns("migrations", "static"))
    (tmp_path / "rmm" / "core" / "planted.py").write_text("from rmm.engine import services\n")
    (tmp_path / "rmm" / "history" / "planted.py").write_text("import scripting.models\n")
    (tmp_path / "rmm" / "newapp").mkdir()
    (tmp_path / "rmm" / "newapp" / "__init__.py").write_text("")
    assert layer_violations(tmp_path) == [
        "rmm.core.planted:1 (core) imports rmm.engine.services (engine)",
        "rmm.history.planted:1 imports the domain app scripting.models",
        "rmm.newapp: in no layer",
    ]


def _python(code: str, var_dir: Path) -> str:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in {"RMM_SECRET_KEY", "RMM_SQLITE_PATH", "RMM_EVIDENCE_ROOT"}}
    env.update(RMM_VAR_DIR=str(var_dir), DJANGO_SETTINGS_MODULE="rmm.settings")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_the_settings_writes_no_file(tmp_path):
    """Issue 13 part 8: no import-time side effects; the first start makes the secret key, once."""
    var = tmp_path / "var"
    _python("import rmm.settings", var)
    assert not var.exists()
    setup = "import django; django.setup(); from django.conf import settings; print(settings.SECRET_KEY)"
    first = _python(setup, var)
    assert len(first) > 40 and (var / "keys" / "django_secret_key").read_text().strip() == first
    assert _python(setup, var) == first  # kept, not generated again
