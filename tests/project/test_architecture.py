"""The engine knows no job kind: new kinds (patch, deployment, enforcement, containment) plug in
through the registry without touching rmm/engine/, and the agent stays free of Django."""

import ast
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
    core = [ROOT / "rmm" / "artefacts", ROOT / "rmm" / "approval_queue.py", ROOT / "rmm" / "blobs.py"]
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
    import sys

    allowed = set(sys.stdlib_module_names) | {"cryptography", "rmm_agent"}
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
LAW_MODULES = {"rmm.authority.services", "rmm.engine.services.kill_switches"}
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
