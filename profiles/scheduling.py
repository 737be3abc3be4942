"""Scheduled audits: each live assignment audits every asset it covers once per its
``audit_interval_seconds``, at a per-(assignment, asset) offset into the interval, through the
engine like any job (under the assignment's PSA task, requested by its requester).

One periodic dispatcher (:func:`dispatch_due`, a django-q2 schedule every minute), not one
django-q2 schedule per assignment or per asset: at 10,000 assets that would be 10,000 schedule rows
the cluster scans and locks each tick, and a site's new asset or a changed interval would have to
rewrite them. The dispatcher keeps one cursor (``profile_audit_schedule``: audits due up to when
were dispatched) and each tick makes the audits whose slot fell in (cursor, now]: a handful of
queries and one sha256 per (assignment, asset), about 10 ms for 10,000. The offsets come from a
hash of the two ids, so they are the same on every run and spread evenly over the interval: a
daily audit of 10,000 assets starts about one every 9 seconds, never all at once.

The laws are the engine's: an assignment whose PSA task expired or was withdrawn is stopped first
(:func:`profiles.assignments.stop_unauthorised_assignments`, with the reason on the assignment and
in the history); an asset the engine would refuse (an engaged kill switch, an agent without the
capability, retired) is skipped, recorded once per tick and assignment, and one whose previous
audit is still active is skipped silently (:mod:`rmm.engine.services.recurring`); a batch the
engine refuses all the same stops the assignment, with the reason.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from profiles import assignments
from profiles.audits import AUDITABLE, KIND
from profiles.models import (
    AssetConfigurationProfile,
    ConfigurationAuditJob,
    ProfileAuditSchedule,
)
from rmm.core.errors import Conflict, Forbidden, InvalidInput
from rmm.engine import services as engine
from rmm.engine.services import recurring
from rmm.engine.states import ACTIVE
from rmm.history import services as history
from rmm.inventory.models import Asset

TICK = timedelta(minutes=1)
CURSOR = "audits"


def next_audit_at(assignment: AssetConfigurationProfile, asset_id, now: datetime | None = None) -> datetime | None:
    """When the schedule next audits this asset for this assignment (None once stopped)."""
    if assignment.status not in AUDITABLE:
        return None
    interval = assignment.audit_interval_seconds
    return recurring.next_at(recurring.offset(interval, assignment.pk, asset_id), interval, now or timezone.now())


def _window(now: datetime) -> datetime | None:
    """Advance the one cursor to ``now``; the start of the window this run dispatches (None when
    another dispatcher holds it). The first run starts one tick back."""
    with transaction.atomic():
        cursor, _ = ProfileAuditSchedule.objects.select_for_update().get_or_create(
            name=CURSOR, defaults={"dispatched_until": now - TICK}
        )
        since = cursor.dispatched_until
        if since >= now:
            return None
        cursor.dispatched_until = now
        cursor.save(update_fields=["dispatched_until"])
    return since


def due_pairs(now: datetime, since: datetime) -> dict[AssetConfigurationProfile, list[Asset]]:
    """The live assignments and, for each, its assets whose slot fell in (since, now] (never before
    the assignment was made or last changed)."""
    live = list(AssetConfigurationProfile.objects.filter(status__in=AUDITABLE).select_related("asset", "requested_by"))
    site_ids = {a.site_id for a in live if a.site_id}
    by_site: dict = {}
    # only what the schedule and the engine's checks read, unsorted: every minute, 10,000 rows
    assets = Asset.objects.filter(site_id__in=site_ids, retired_at__isnull=True).only("id", "site_id", "retired_at")
    for asset in assets.order_by():
        by_site.setdefault(asset.site_id, []).append(asset)
    due = {}
    for assignment in live:
        start = max(since, assignment.updated_at)
        covered = [assignment.asset] if assignment.asset_id else by_site.get(assignment.site_id, [])
        interval = assignment.audit_interval_seconds
        these = [
            asset
            for asset in covered
            if asset.retired_at is None
            and recurring.is_due(recurring.offset(interval, assignment.pk, asset.pk), interval, start, now)
        ]
        if these:
            due[assignment] = these
    return due


def dispatch_due(now: datetime | None = None) -> list[ConfigurationAuditJob]:
    """One tick of the schedule: stop assignments whose authority went, then create the audits that
    fell due since the last tick, one batch per assignment, skipping assets under an engaged kill
    switch and those whose previous audit of the assignment is still active."""
    now = now or timezone.now()
    assignments.stop_unauthorised_assignments(now)
    since = _window(now)
    if since is None:
        return []
    due = due_pairs(now, since)
    if not due:
        return []
    busy = set(
        ConfigurationAuditJob.objects.filter(assignment__in=list(due), status__in=ACTIVE).values_list(
            "assignment_id", "asset_id"
        )
    )
    made = []
    for assignment, assets in due.items():
        found = recurring.creatable(
            KIND, assets, busy=[asset.pk for asset in assets if (assignment.pk, asset.pk) in busy]
        )
        # what the engine would refuse is recorded; a previous audit still active is no news
        skipped = {str(pk): skip.reason for pk, skip in found.skipped.items() if skip.why != recurring.BUSY}
        if skipped:
            history.append(
                "system",
                "profile_assignment.audit_skipped",
                assignment,
                site_id=assignments.site_id_of(assignment),
                payload={"assets": skipped},
            )
        if found.ready:
            made.extend(_create(assignment, found.ready))
    return made


def _create(assignment: AssetConfigurationProfile, assets: list[Asset]) -> list[ConfigurationAuditJob]:
    """The engine creates them (every law again). A refusal, recorded there, stops the assignment's
    schedule with the reason: retried every interval it would only be refused again."""
    common = {"psa_task_id": assignment.psa_task_id, "assignment_id": assignment.pk}
    try:
        if assignment.asset_id:
            return [engine.create_job(assignment.requested_by, KIND, asset_id=assets[0].pk, **common)]
        return engine.create_jobs(assignment.requested_by, KIND, asset_ids=[a.pk for a in assets], **common)
    except (InvalidInput, Forbidden, Conflict) as exc:
        assignments._stop("system", assignment, f"the engine refused its scheduled audit: {exc}")
        return []


def schedule_state(assignment: AssetConfigurationProfile) -> tuple[str, str]:
    """``scheduled`` while live, else ``stopped`` with the reason (the assignment's status reason)."""
    if assignment.status in AUDITABLE:
        return "scheduled", ""
    return "stopped", assignment.status_reason or assignment.get_status_display()
