"""Builders shared by the evidence tests: evidence recorded through the service, exports run inline."""

from __future__ import annotations

import io
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

from evidence import services as evidence
from scripting.kind import SCRIPT_RESULT
from tests.helpers import approved_authority, make_agent, post_json


def script_document(asset, task, *, n: int = 0, outcome: str = "succeeded") -> dict:
    """A document shaped like the script kind's (scripting/kind.py)."""
    return {
        "evidence_type": SCRIPT_RESULT,
        "job": {
            "kind": "script",
            "id": str(uuid.uuid4()),
            "status": outcome,
            "requested_by": "tech",
            "approved_by": "approver",
            "started_at": "2026-01-01T10:00:00+00:00",
            "completed_at": "2026-01-01T10:00:05+00:00",
        },
        "script": {"name": f"fix-{n}", "version": 1, "approved_by": "approver", "privileged": False},
        "authority": {
            "psa_task_id": str(task.pk),
            "psa_task_title": task.title,
            "psa_case_id": str(task.case_id),
            "psa_case_title": task.case.title,
        },
        "asset": {"id": str(asset.pk), "hostname": asset.hostname, "site": asset.site.name},
        "result": {"outcome": outcome, "exit_code": 0, "stdout": f"done {n}\n"},
    }


def record_item(asset, task, *, n: int = 0, evidence_type: str = SCRIPT_RESULT):
    return evidence.record(
        asset=asset,
        evidence_type=evidence_type,
        related_entity="script_job",
        related_id=uuid.uuid4(),
        psa_case_id=task.case_id,
        psa_task_id=task.pk,
        document=script_document(asset, task, n=n),
    )


class World:
    """Two sites, each with an asset, approved PSA authority and a few evidence items."""

    def __init__(self, caller, site, other_site, items_per_site: int = 3):
        self.psa = caller("psa", "psa")
        self.site, self.other_site = site, other_site
        self.asset = make_agent(site, "alpha-1")[0].asset
        self.other_asset = make_agent(other_site, "beta-1")[0].asset
        self.task = approved_authority(site, self.psa.user)
        self.other_task = approved_authority(other_site, self.psa.user)
        self.items = [record_item(self.asset, self.task, n=n) for n in range(items_per_site)]
        self.other_items = [record_item(self.other_asset, self.other_task, n=n) for n in range(items_per_site)]


def run_export(client, django_capture_on_commit_callbacks, settings, **body):
    """POST an export and let its background task run inline; the export's id."""
    settings.RMM_TASKS_SYNC = True
    with django_capture_on_commit_callbacks(execute=True):
        response = post_json(client, "/api/v1/evidence/exports/", body)
    assert response.status_code == 202, response.content
    return response.json()["id"]


def download(client, export_id: str) -> bytes:
    response = client.get(f"/api/v1/evidence/exports/{export_id}/download/")
    assert response.status_code == 200, response.content
    return b"".join(response.streaming_content)


def unpack(bundle: bytes, where: Path) -> Path:
    with zipfile.ZipFile(io.BytesIO(bundle)) as zf:
        zf.extractall(where)
    (folder,) = [p for p in where.iterdir() if p.is_dir()]
    return folder


def run_verify(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """The auditor's step: the bundle's own verify.py, isolated from this project (-I)."""
    return subprocess.run(
        [sys.executable, "-I", "verify.py", *args], cwd=folder, capture_output=True, text=True, timeout=120
    )
