"""Scripts as controlled artefacts, and script jobs on upstream authority (created by the engine)."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from rmm.engine import services as engine
from rmm.errors import Conflict, Forbidden, InvalidInput
from rmm.history import services as history
from scripting.models import ApprovalStatus, Language, Script, ScriptJob

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
    for _attempt in range(5):
        try:
            with transaction.atomic():
                latest = Script.objects.filter(name=name).aggregate(v=Max("version"))["v"] or 0
                script = Script.objects.create(
                    name=name,
                    version=latest + 1,
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
                        "version": script.version,
                        "sha256": script.sha256,
                        "language": language,
                        "privileged": script.privileged,
                    },
                )
                return script
        except IntegrityError:
            continue  # another author took this version number; take the next
    raise Conflict("Too many concurrent versions of this script; try again.")


def _decide_script(script: Script, user, *, approve: bool, reason: str = "") -> Script:
    action = "script.approve" if approve else "script.reject"
    _require(user, "approve", action, script)
    engine.check_four_eyes(script, user, author_field="author", action=action)
    if approve and script.privileged and not user.has_perm("scripting.approve_privileged"):
        history.record_refusal(
            user, action, script, reason="privileged version needs the privileged-approval permission"
        )
        raise Forbidden("Approving a privileged script version needs the privileged-approval permission.")
    if not approve and not (reason or "").strip():
        raise InvalidInput("A rejection needs a reason.", field="reason")
    to = ApprovalStatus.APPROVED if approve else ApprovalStatus.REJECTED
    now = timezone.now()
    with transaction.atomic():
        # Conditional update: of two approvers acting at once, exactly one decision stands.
        won = Script.objects.filter(pk=script.pk, approval_status=ApprovalStatus.PENDING).update(
            approval_status=to, decided_by=user, decided_at=now, decision_reason=(reason or "").strip()
        )
        if not won:
            current = Script.objects.values_list("approval_status", flat=True).get(pk=script.pk)
            raise Conflict(f"This script version is already {current}.")
        history.append(
            user, f"script.{to}", script, payload={"name": script.name, "version": script.version, "reason": reason}
        )
    script.refresh_from_db()
    return script


def approve_script(script: Script, user) -> Script:
    return _decide_script(script, user, approve=True)


def reject_script(script: Script, user, reason: str) -> Script:
    return _decide_script(script, user, approve=False, reason=reason)


def create_script_job(user, *, script_id, asset_id, psa_task_id) -> ScriptJob:
    """One approved script version on one asset, on a PSA task's authority: the engine creates
    it and applies every law (:func:`rmm.engine.services.create_job`)."""
    return engine.create_job(user, "script", asset_id=asset_id, psa_task_id=psa_task_id, script_id=script_id)


def create_script_jobs(user, *, script_id, psa_task_id, asset_ids=None, site_name=None) -> list[ScriptJob]:
    """One script on many assets (the listed ones, or every asset of a site), one job per asset,
    released in waves (:func:`rmm.engine.services.create_jobs`)."""
    return engine.create_jobs(
        user, "script", psa_task_id=psa_task_id, asset_ids=asset_ids, site_name=site_name, script_id=script_id
    )


def approve_script_job(job: ScriptJob, user) -> None:
    engine.approve_job(job, user)


def reject_script_job(job: ScriptJob, user, reason: str) -> None:
    engine.reject_job(job, user, reason)


def expire_pending_versions(now=None) -> int:
    """Versions left pending past the approval TTL are rejected, with the reason, by the system."""
    now = now or timezone.now()
    cutoff = now - timedelta(hours=settings.RMM_APPROVAL_TTL_HOURS)
    count = 0
    for script in Script.objects.filter(approval_status=ApprovalStatus.PENDING, created_at__lt=cutoff):
        reason = f"approval expired after {settings.RMM_APPROVAL_TTL_HOURS} h"
        with transaction.atomic():
            if Script.objects.filter(pk=script.pk, approval_status=ApprovalStatus.PENDING).update(
                approval_status=ApprovalStatus.REJECTED, decided_at=now, decision_reason=reason
            ):
                history.append("system", "script.rejected", script, payload={"reason": reason})
                count += 1
    return count
