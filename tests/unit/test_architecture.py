"""The engine knows no job kind: new kinds (patch, deployment, enforcement, containment) plug in
through the registry without touching rmm/engine/, and the agent stays free of Django."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOMAIN_APPS = {"scripting", "evidence", "profiles", "patching", "deployment", "sessions"}


def imported_modules(folder: Path) -> set[str]:
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
    return names


def test_the_engine_imports_no_domain_app():
    leaks = {name for name in imported_modules(ROOT / "rmm" / "engine") if name.split(".")[0] in DOMAIN_APPS}
    assert leaks == set()


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
