"""Scripts as controlled artefacts, and script jobs on upstream authority (created by the engine)."""

from __future__ import annotations

import hashlib

from django.conf import settings

from rmm.artefacts import services as artefacts
from rmm.core.errors import InvalidInput
from rmm.engine import services as engine
from rmm.history import services as history
from scripting.models import Language, Script, ScriptJob

LANGUAGES = {choice.value for choice in Language}
MAX_SCRIPT_BYTES = 256 * 1024


def _require(user, capability: str, action: str, subject=None) -> None:
    engine.require_role(user, capability, action, subject)


def create_script(
    user,
    *,
    name: str,
    language: str,
    content: str,
    requires_approval: bool = False,
    timeout_seconds: int | None = None,
    privileged: bool = False,
) -> Script:
    """A new version of ``name``: content never changes once written; new content, new version."""
    _require(user, "author_scripts", "script.create")
    name = (name or "").strip()
    if not name:
        raise InvalidInput("This field is required.", field="name")
    if language not in LANGUAGES:
        raise InvalidInput(f"Must be one of: {', '.join(sorted(LANGUAGES))}.", field="language")
    if not content or not content.strip():
        raise InvalidInput("A script needs content.", field="content")
    if len(content.encode()) > MAX_SCRIPT_BYTES:
        raise InvalidInput(f"At most {MAX_SCRIPT_BYTES} bytes.", field="content")
    if timeout_seconds is None:
        timeout_seconds = settings.RMM_DEFAULT_TIMEOUT_SECONDS
    if not 1 <= int(timeout_seconds) <= 24 * 3600:
        raise InvalidInput("Between 1 second and 24 hours.", field="timeout_seconds")

    def write(version: int) -> Script:
        script = Script.objects.create(
            name=name,
            version=version,
            language=language,
            content=content,
            sha256=hashlib.sha256(content.encode()).hexdigest(),
            requires_approval=bool(requires_approval),
            privileged=bool(privileged),
            timeout_seconds=int(timeout_seconds),
            author=user,
        )
        history.append(
            user,
            "script.created",
            script,
            payload={
                "name": name,
                "version": version,
                "sha256": script.sha256,
                "language": language,
                "privileged": script.privileged,
            },
        )
        return script

    return artefacts.create_version(Script, name, write, label="script")


def approve_script(script: Script, user) -> Script:
    """Through the one approval service for artefacts (:mod:`rmm.artefacts.services`)."""
    return artefacts.decide(script, user, approve=True)


def reject_script(script: Script, user, reason: str) -> Script:
    return artefacts.decide(script, user, approve=False, reason=reason)


def create_script_job(user, *, script_id, asset_id, psa_task_id) -> ScriptJob:
    """One approved script version on one asset, on a PSA task's authority: the engine creates
    it and applies every law (:func:`rmm.engine.services.create_job`)."""
    return engine.create_job(user, "script", asset_id=asset_id, psa_task_id=psa_task_id, script_id=script_id)


def create_script_jobs(
    user, *, script_id, psa_task_id, asset_ids=None, site_name=None, plan: dict | None = None
) -> list[ScriptJob]:
    """One script on many assets (the listed ones, or every asset of a site), one job per asset,
    in one batch released by its ``plan`` (:func:`rmm.engine.services.create_jobs`)."""
    return engine.create_jobs(
        user,
        "script",
        psa_task_id=psa_task_id,
        asset_ids=asset_ids,
        site_name=site_name,
        plan=plan,
        script_id=script_id,
    )


def approve_script_job(job: ScriptJob, user) -> None:
    engine.approve_job(job, user)


def reject_script_job(job: ScriptJob, user, reason: str) -> None:
    engine.reject_job(job, user, reason)


def expire_pending_versions(now=None) -> int:
    """Pending versions past the approval TTL are rejected by the system: those of every artefact
    kind, scripts' among them (:func:`rmm.artefacts.services.expire_pending`)."""
    return artefacts.expire_pending(now)
