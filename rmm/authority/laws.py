"""Law 1 and the self-authorization policy: whether a PSA task authorises work on an asset, and
whether its requester wrote that authority. The engine applies them to every job it creates
(rmm/engine/services/creating.py); they read the mirrors only, so they sit below the engine, and
the PSA's writes (rmm/authority/services.py), which withdraw the engine's work, above it."""

from __future__ import annotations

from django.utils import timezone

from rmm.authority.models import PsaTask, authority_gone
from rmm.inventory.models import Asset, Site

SELF_AUTHORIZED = "the requester wrote its own authority; this site's policy wants a second person to approve"


def self_authorized(task: PsaTask, user, site: Site) -> bool:
    """Does this job need a person's approval because its requester wrote the authority it cites
    (the PSA case or task) and the site's policy does not allow that (the default)?"""
    if site.allow_self_authorized_jobs or user is None:
        return False
    return user.pk in (task.written_by_id, task.case.written_by_id)


def authority_problem(task: PsaTask | None, asset: Asset, now=None) -> str | None:
    """Why this task does not authorise work on this asset, or None when it does.

    Law 1: every job-creating service calls this before it writes a job row.
    """
    return _problem(task, asset.site_id, "the asset is outside the PSA case's site", now)


def site_authority_problem(task: PsaTask | None, site: Site, now=None) -> str | None:
    """Why this task does not authorise work on every asset of this site (a configuration profile
    assigned to the whole site), or None when it does: the same law, for a site."""
    return _problem(task, site.pk, "the site is not the PSA case's site", now)


def _problem(task: PsaTask | None, site_id, outside: str, now) -> str | None:
    now = now or timezone.now()
    if task is None:
        return "no PSA task given"
    case = task.case
    gone = authority_gone(case.status, case.expires_at, task.status, task.expires_at, now)
    if gone:
        return gone
    if case.site_id != site_id:
        return outside
    return None
