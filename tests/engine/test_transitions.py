"""One transition path: every status change of a job or an instruction goes through
rmm/engine/services/transitions.py, which consults the table of allowed transitions and appends
the change's history event. A scan of the code finds any other writer of a status column."""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import pytest
from django.utils import timezone

from rmm.engine import services as engine
from rmm.engine.services import transitions
from rmm.history.models import HistoryEvent
from tests.helpers import approved_authority, make_agent
from tests.stepkind.jobs import create_step_job

ROOT = Path(__file__).resolve().parents[2]
THE_PATH = ROOT / "rmm" / "engine" / "services" / "transitions.py"
NOT_SCANNED = {"tests", "bench", "rmm_agent", "scripts", "templates", "docs"}  # no product code writes there
# Status enums of other tables (exports, outbox deliveries, PSA authority): their columns are not
# a job's or an instruction's.
_RAW_STATUS_UPDATE = re.compile(r"\bUPDATE\b.*\bSET\b.*\bstatus\b", re.IGNORECASE | re.DOTALL)


def _other_table_status(value: ast.expr) -> bool:
    """``SomeStatus.MEMBER`` of an enum that is not the jobs' and instructions' ``JobStatus``."""
    return (
        isinstance(value, ast.Attribute)
        and isinstance(value.value, ast.Name)
        and value.value.id.endswith("Status")
        and value.value.id != "JobStatus"
    )


# Models with a status column of their own, written by their own services (a batch's status is
# derived from its jobs', which only the one path writes; a profile assignment is no job; a patch
# request is decided whole and an asset's patch is actual state a scan writes: neither is a job).
OTHER_TABLES = {"Batch", "AssetConfigurationProfile", "PatchJob", "AssetPatch", "VulnerabilityFinding"}


def _on_other_table(call: ast.Call) -> bool:
    """``Batch.objects....update(status=...)``: the call's receiver chain starts at such a model."""
    node = call.func.value
    while isinstance(node, ast.Attribute | ast.Call):
        node = node.value if isinstance(node, ast.Attribute) else node.func
    return isinstance(node, ast.Name) and node.id in OTHER_TABLES


def _names_status(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Constant) and n.value == "status" for n in ast.walk(node))


def status_writers(path: Path) -> list[str]:
    """Where the module at ``path`` writes a status column by any means but the one path:
    ``.update(status=...)``, ``bulk_update`` or ``save(update_fields=...)`` naming ``status``,
    ``.status = ...`` in a function that saves, or raw SQL that sets a status."""
    tree = ast.parse(path.read_text())
    found = []

    def where(node) -> str:
        return f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{node.lineno}"

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method = node.func.attr
            for keyword in node.keywords:
                if (
                    method == "update"
                    and keyword.arg == "status"
                    and not _other_table_status(keyword.value)
                    and not _on_other_table(node)
                ):
                    found.append(f"{where(node)} .update(status=...)")
                if keyword.arg == "update_fields" and _names_status(keyword.value):
                    found.append(f"{where(node)} save(update_fields=[... 'status'])")
            if method == "bulk_update" and any(_names_status(arg) for arg in [*node.args, *node.keywords]):
                found.append(f"{where(node)} bulk_update(..., ['status'])")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _RAW_STATUS_UPDATE.search(node.value):
            found.append(f"{where(node)} raw SQL setting a status")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            # ``.update(**fields)`` where ``fields`` is a dict naming "status" in the same function
            status_dicts = {
                target.id
                for n in ast.walk(node)
                if isinstance(n, ast.Assign) and isinstance(n.value, ast.Dict) and _names_status(n.value)
                for target in n.targets
                if isinstance(target, ast.Name)
            }
            for n in ast.walk(node):
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "update":
                    for keyword in n.keywords:
                        splat = keyword.value
                        if keyword.arg is None and (
                            (isinstance(splat, ast.Name) and splat.id in status_dicts)
                            or (isinstance(splat, ast.Dict) and _names_status(splat))
                        ):
                            found.append(f"{where(n)} .update(**{{'status': ...}})")
            saves = any(
                isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "save"
                for n in ast.walk(node)
            )
            for n in ast.walk(node):
                targets = n.targets if isinstance(n, ast.Assign) else [n.target] if isinstance(n, ast.AugAssign) else []
                if saves and any(isinstance(t, ast.Attribute) and t.attr == "status" for t in targets):
                    found.append(f"{where(n)} .status = ... then save()")
    return found


def product_modules() -> list[Path]:
    return [
        path
        for path in ROOT.glob("*/**/*.py")
        if path.parts[len(ROOT.parts)] not in NOT_SCANNED | {".venv", ".git"}
        and "migrations" not in path.parts
        and path != THE_PATH
    ]


def test_no_module_but_the_one_path_writes_a_job_or_instruction_status():
    modules = product_modules()
    engine = {path.name for path in modules if path.parent == ROOT / "rmm" / "engine" / "services"}
    assert {"deciding.py", "issuing.py", "leasing.py", "results.py", "stopping.py"} <= engine  # every arrow's
    assert [writer for path in modules for writer in status_writers(path)] == []


def test_the_one_path_itself_is_seen_by_the_scan():
    """The scan is not blind: the transition path's own writes are each found."""
    assert len(status_writers(THE_PATH)) >= 4


PLANTED = {
    "update": """
        from scripting.models import ScriptJob

        def finish(pk):
            ScriptJob.objects.filter(pk=pk).update(status="succeeded")
    """,
    "bulk_update": """
        from rmm.engine.models import Instruction

        def lease(rows):
            Instruction.objects.bulk_update(rows, ["status", "leased_at"])
    """,
    "save": """
        def finish(job):
            job.status = "failed"
            job.save()
    """,
    "update_fields": """
        def finish(job):
            job.save(update_fields=["status"])
    """,
    "splat": """
        def start(model, ids):
            fields = {"status": "running"}
            model.objects.filter(pk__in=ids).update(**fields)
    """,
    "raw_sql": """
        def finish(cursor, pk):
            cursor.execute("UPDATE engine_instruction SET status = 'lost' WHERE id = %s", [pk])
    """,
}


@pytest.mark.parametrize("form", sorted(PLANTED))
def test_a_writer_planted_in_a_temporary_module_is_caught(tmp_path, form):
    module = tmp_path / "planted.py"
    module.write_text(textwrap.dedent(PLANTED[form]))
    assert len(status_writers(module)) == 1


def test_other_tables_statuses_are_not_mistaken_for_a_jobs(tmp_path):
    module = tmp_path / "exports.py"
    module.write_text("def fail(rows):\n    rows.update(status=ExportStatus.FAILED)\n")
    assert status_writers(module) == []


def test_the_table_refuses_a_move_it_does_not_allow(site, caller):
    psa = caller("psa", "psa")
    agent, _ = make_agent(site)
    job = create_step_job(psa.user, asset=agent.asset, task=approved_authority(site, psa.user))
    [inst] = engine.job_instructions(job)
    with pytest.raises(ValueError, match="allows no move"):
        transitions.transition_instruction(inst, "running", "system", payload={}, only_from=["succeeded"])


def test_a_lease_records_the_job_becoming_running(site, caller):
    """The bulk path that starts jobs appends their history event as the single path does."""
    psa = caller("psa", "psa")
    agent, _ = make_agent(site)
    job = create_step_job(psa.user, asset=agent.asset, task=approved_authority(site, psa.user))
    engine.lease(agent, 4, timezone.now())
    [event] = HistoryEvent.objects.filter(subject_id=str(job.pk), action="job.running")
    assert event.payload == {"kind": "step", "from": "queued", "to": "running", "reason": ""}
    assert event.actor == f"agent:{agent.pk}"
