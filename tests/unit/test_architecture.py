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
