"""Upstream authority: the PSA's cases and tasks, which every job cites (Law 1)."""

from __future__ import annotations

import uuid
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from rmm.access import roles as access
from rmm.authority.models import AuthorityStatus, PsaCase, PsaTask
from rmm.core.errors import Forbidden, InvalidInput
from rmm.engine import services as engine
from rmm.history import services as history

STATUSES = {s.value for s in AuthorityStatus}


def _require(user, capability: str, action: str) -> None:
    if not access.can(user, capability):
        history.record_refusal(user, action, reason=f"role may not {capability.replace('_', ' ')}")
        raise Forbidden(f"Your role may not {capability.replace('_', ' ')}.")


def _status(value, field="status") -> str:
    if value not in STATUSES:
        raise InvalidInput(f"Must be one of: {', '.join(sorted(STATUSES))}.", field=field)
    return value


def upsert_case(user, case_id: uuid.UUID, *, title: str, status: str, site_name: str, expires_at=None) -> PsaCase:
    _require(user, "manage_authority", "psa_case.upsert")
    _status(status)
    if not title:
        raise InvalidInput("This field is required.", field="title")
    site = access.visible_sites(user).filter(name=site_name).first()
    if site is None:
        raise InvalidInput(f"No site named {site_name!r} that you may use.", field="site")
    with transaction.atomic():
        case = PsaCase.objects.select_for_update().filter(pk=case_id).first()
        if case is not None and not access.may_see_site(user, case.site_id):
            raise InvalidInput("This case belongs to a site you may not use.", field="site")
        before = None if case is None else {"status": case.status, "site": case.site.name, "title": case.title}
        if case is None:
            case = PsaCase(id=case_id)
        case.title, case.status, case.site, case.expires_at = title, status, site, expires_at
        case.written_by = user
        case.save()
        history.append(
            user,
            "psa_case.created" if before is None else "psa_case.updated",
            case,
            site_id=site.pk,
            payload={"before": before, "after": {"status": status, "site": site.name, "title": title}},
        )
    if before is not None and _withdrawn(before, status, expires_at, site_changed=before["site"] != site.name):
        engine.withdraw_authority(user, f"PSA case is {status}", case_id=case.pk)
    return case


def upsert_task(user, task_id: uuid.UUID, *, case_id, title: str, status: str, expires_at=None) -> PsaTask:
    _require(user, "manage_authority", "psa_task.upsert")
    _status(status)
    if not title:
        raise InvalidInput("This field is required.", field="title")
    case = PsaCase.objects.filter(pk=case_id, site__in=access.visible_sites(user)).first()
    if case is None:
        raise InvalidInput("No such PSA case.", field="case")
    with transaction.atomic():
        task = PsaTask.objects.select_for_update().filter(pk=task_id).first()
        if task is not None and task.case_id != case.pk:
            raise InvalidInput("A task cannot move to another case.", field="case")
        before = None if task is None else {"status": task.status, "title": task.title}
        if task is None:
            task = PsaTask(id=task_id, case=case)
        task.title, task.status, task.expires_at = title, status, expires_at
        task.written_by = user
        task.save()
        history.append(
            user,
            "psa_task.created" if before is None else "psa_task.updated",
            task,
            site_id=case.site_id,
            payload={"case": str(case.pk), "before": before, "after": {"status": status, "title": title}},
        )
    if before is not None and _withdrawn(before, status, expires_at):
        engine.withdraw_authority(user, f"PSA task is {status}", task_id=task.pk)
    return task


def _withdrawn(before: dict, status: str, expires_at, site_changed: bool = False) -> bool:
    """Did this update take away authority that work may already be running on?"""
    expired = expires_at is not None and expires_at <= timezone.now()
    return status != AuthorityStatus.APPROVED or expired or site_changed


LOCAL_ROLE = "psa"


def record_local_authority(
    user, *, site_name: str, case_title: str, task_title: str, expires_at: datetime | None = None
) -> PsaTask:
    """For an installation with no PSA yet: a person holding the ``psa`` role records an approved
    case and one task of it (new ids) through the PSA's own upserts, so the same checks, history
    events and ``written_by`` apply. A job its recorder then requests on it is self-authorized and
    waits for a second person unless the site's policy allows it (rmm/authority/laws.py)."""
    if LOCAL_ROLE not in access.roles_of(user):
        history.record_refusal(user, "psa_case.record_local", reason="only the psa role records local authority")
        raise Forbidden("Only a person holding the psa role may record local authority.")
    for field, value in (("case_title", case_title), ("task_title", task_title)):
        if not (value or "").strip():
            raise InvalidInput("This field is required.", field=field)
    with transaction.atomic():
        case = upsert_case(
            user,
            uuid.uuid4(),
            title=case_title.strip(),
            status=AuthorityStatus.APPROVED,
            site_name=site_name,
            expires_at=expires_at,
        )
        return upsert_task(
            user,
            uuid.uuid4(),
            case_id=case.pk,
            title=task_title.strip(),
            status=AuthorityStatus.APPROVED,
            expires_at=expires_at,
        )
