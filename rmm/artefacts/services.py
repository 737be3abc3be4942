"""The one approval service for every artefact kind (:mod:`rmm.artefacts.registry`).

Law 8 for artefacts: the author never decides a version of theirs; approving a privileged one
needs its kind's permission; of two approvers acting at once exactly one decision stands (a
conditional update, not a read-then-write); a version left pending past ``RMM_APPROVAL_TTL_HOURS``
is rejected by the system. Every refusal is recorded in the history.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeVar

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.db.models import Max, QuerySet
from django.utils import timezone

from rmm.access import roles as access
from rmm.artefacts import registry
from rmm.artefacts.registry import ArtefactKind
from rmm.artefacts.states import ApprovalStatus
from rmm.core.errors import Conflict, Forbidden, InvalidInput, ServiceError
from rmm.engine.services import check_four_eyes
from rmm.history import services as history

V = TypeVar("V", bound=models.Model)


def create_version(
    model: type[V],
    name: str | models.Model,
    write: Callable[[int], V],
    *,
    label: str,
    revision: str = "version",
    lineage: str = "name",
) -> V:
    """The next version of ``name`` (the value of the ``lineage`` field): ``write(number)`` creates
    it (and appends its history) in a transaction; when another author took that number at once
    (the unique lineage and ``revision`` fields), the next number is tried."""
    for _attempt in range(5):
        try:
            with transaction.atomic():
                latest = model.objects.filter(**{lineage: name}).aggregate(v=Max(revision))["v"] or 0
                return write(latest + 1)
        except IntegrityError:
            continue
    raise Conflict(f"Too many concurrent versions of this {label}; try again.")


def decide(artefact, user, *, approve: bool, reason: str = ""):
    """Approve or reject a pending version of any registered kind; the decided version."""
    kind = registry.kind_of(artefact)
    action = f"{kind.action_prefix}.{'approve' if approve else 'reject'}"
    site_id = site_of(kind, artefact)
    if not access.can(user, "approve"):
        history.record_refusal(user, action, artefact, reason="role may not approve", site_id=site_id)
        raise Forbidden("Your role may not approve.")
    check_four_eyes(artefact, user, author_field="author", action=action)
    if approve and kind.privileged(artefact) and not user.has_perm(kind.privileged_permission):
        history.record_refusal(
            user,
            action,
            artefact,
            reason="privileged version needs the privileged-approval permission",
            site_id=site_id,
        )
        raise Forbidden(f"Approving a privileged {kind.label} needs the privileged-approval permission.")
    if not approve and not (reason or "").strip():
        raise InvalidInput("A rejection needs a reason.", field="reason")
    to = ApprovalStatus.APPROVED if approve else ApprovalStatus.REJECTED
    with transaction.atomic():
        # Conditional update: of two approvers acting at once, exactly one decision stands.
        won = kind.model.objects.filter(pk=artefact.pk, approval_status=ApprovalStatus.PENDING).update(
            approval_status=to, decided_by=user, decided_at=timezone.now(), decision_reason=(reason or "").strip()
        )
        if not won:
            current = kind.model.objects.values_list("approval_status", flat=True).get(pk=artefact.pk)
            raise Conflict(f"This {kind.label} is already {current}.")
        history.append(
            user,
            f"{kind.action_prefix}.{to}",
            artefact,
            site_id=site_id,
            payload={"name": str(getattr(artefact, kind.lineage)), "version": number(kind, artefact), "reason": reason},
        )
    artefact.refresh_from_db()
    return artefact


def expire_pending(now: datetime | None = None) -> int:
    """Versions of every kind left pending past the approval TTL are rejected by the system, with
    the reason; how many."""
    now = now or timezone.now()
    hours = settings.RMM_APPROVAL_TTL_HOURS
    reason = f"approval expired after {hours} h"
    count = 0
    for kind in registry.all_kinds():
        stale = kind.model.objects.filter(
            approval_status=ApprovalStatus.PENDING, created_at__lt=now - timedelta(hours=hours)
        )
        for artefact in stale:
            with transaction.atomic():
                if kind.model.objects.filter(pk=artefact.pk, approval_status=ApprovalStatus.PENDING).update(
                    approval_status=ApprovalStatus.REJECTED, decided_at=now, decision_reason=reason
                ):
                    history.append(
                        "system",
                        f"{kind.action_prefix}.rejected",
                        artefact,
                        site_id=site_of(kind, artefact),
                        payload={"reason": reason},
                    )
                    count += 1
    return count


def site_of(kind: ArtefactKind, artefact):
    """The id of the site the version belongs to, or None for a kind every site shares."""
    return getattr(artefact, f"{kind.site}_id") if kind.site else None


def number(kind: ArtefactKind, artefact) -> int:
    """The version's place along its lineage (1, 2, ...)."""
    return getattr(artefact, kind.revision)


def previous_approved(kind: ArtefactKind, artefact):
    """The newest approved version before this one of the same name, or None."""
    return (
        kind.model.objects.filter(
            **{kind.lineage: getattr(artefact, kind.lineage), f"{kind.revision}__lt": number(kind, artefact)},
            approval_status=ApprovalStatus.APPROVED,
        )
        .order_by(f"-{kind.revision}")
        .first()
    )


def diff(kind: ArtefactKind, artefact) -> str:
    """Unified diff of the content from the previous approved version ("" when there is none):
    what approving this one changes in what may run."""
    previous = previous_approved(kind, artefact)
    if previous is None:
        return ""
    name = getattr(artefact, kind.lineage)
    return "".join(
        difflib.unified_diff(
            kind.content(previous).splitlines(keepends=True),
            kind.content(artefact).splitlines(keepends=True),
            fromfile=f"{name} v{number(kind, previous)}",
            tofile=f"{name} v{number(kind, artefact)}",
        )
    )


def pending(
    kind_name: str = "", created_before: datetime | None = None, limit: int = 200, sites: QuerySet | None = None
) -> list[dict]:
    """Pending versions of every registered kind (or of ``kind_name``), oldest first, each with
    its content and diff: what the approval queue shows. ``sites``: the versions of a site's kind
    are those of these sites only (the caller's, Law 7)."""
    items = []
    for kind in registry.all_kinds():
        if kind_name not in ("", kind.name):
            continue
        versions = kind.model.objects.filter(approval_status=ApprovalStatus.PENDING).select_related("author")
        if kind.site:
            versions = versions.select_related(kind.site)
            if sites is not None:
                versions = versions.filter(**{f"{kind.site}__in": sites})
        if created_before:
            versions = versions.filter(created_at__lte=created_before)
        items += [_item(kind, version) for version in versions.order_by("created_at")[:limit]]
    return items


def _item(kind: ArtefactKind, version) -> dict:
    item = {
        "kind": kind.name,
        "artefact": True,
        "obj": version,
        "name": getattr(version, kind.lineage),
        "created_at": version.created_at,
        "requester": version.author,
        "title": f"{kind.label.capitalize()} {kind.describe(version)}",
        "privileged": kind.privileged(version),
        "details": kind.details(version),
        "problem": "",
    }
    try:
        item["content"], item["diff"] = kind.content(version), diff(kind, version)
    except ServiceError as exc:  # content whose blob is missing or altered: shown, never a 500
        item["content"], item["diff"], item["problem"] = "", "", exc.detail
    return item
