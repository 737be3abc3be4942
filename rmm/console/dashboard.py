"""The console's home: how the fleet and its jobs are doing, for the sites the user may see.

Every number is an aggregate query (``COUNT`` with ``GROUP BY`` or ``FILTER``), so the page costs
the same number of queries for ten assets and jobs as for a hundred thousand:

- agents: one query over the assets, each counted once as online, rebooting, offline, never seen
  or revoked, with the asset list's definitions (:mod:`rmm.console.asset_list`, the engine's
  presence sweep): online while the agent, not revoked, was seen within
  ``RMM_AGENT_OFFLINE_SECONDS``; rebooting (not offline) while its reboot's grace lasts;
- jobs by status: one query, every job kind's table grouped by status and joined with
  ``UNION ALL``, counting the last 24 hours and the last 7 days at once (jobs inside batches too);
- failures needing attention: the newest failed, timed-out and lost jobs of the last 7 days, from
  the job list's own query (``listing.job_rows``), one query per such status;
- pending approvals and engaged kill switches: the navigation's own counts
  (:mod:`rmm.console.context`), shown here as panels;
- on a fresh installation, until a job has finished, the first-run guide
  (:mod:`rmm.console.first_run`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q
from django.shortcuts import render
from django.utils import timezone

from rmm.access import roles as access
from rmm.console import first_run
from rmm.console.job_list import JobTable
from rmm.engine import registry
from rmm.engine.services import listing
from rmm.engine.states import JobStatus
from rmm.inventory.models import Asset

DAY = timedelta(hours=24)
WEEK = timedelta(days=7)
# What a technician should look at: the job ended without doing its work, and nobody chose that
# (aborted and rejected jobs were someone's decision).
ATTENTION = (JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.LOST)
FAILURES_SHOWN = 10
PRESENCE = ("online", "rebooting", "offline", "never_seen", "revoked")


def agent_counts(user, now: datetime) -> dict[str, int]:
    """The user's active assets (retired ones are gone from counts) by their agent's presence
    (:data:`PRESENCE`, each asset in one), and ``total``: one query."""
    cutoff = now - timedelta(seconds=settings.RMM_AGENT_OFFLINE_SECONDS)
    live = Q(agent__isnull=False, agent__revoked_at__isnull=True)
    rebooting = Q(agent__rebooting_until__gte=now)
    awake = live & (Q(agent__rebooting_until__isnull=True) | Q(agent__rebooting_until__lt=now))
    return Asset.objects.filter(site__in=access.visible_sites(user), retired_at__isnull=True).aggregate(
        total=Count("pk"),
        online=Count("pk", filter=awake & Q(agent__last_seen_at__gte=cutoff)),
        rebooting=Count("pk", filter=live & rebooting),
        offline=Count("pk", filter=awake & Q(agent__last_seen_at__lt=cutoff)),
        never_seen=Count("pk", filter=Q(agent__isnull=True) | (awake & Q(agent__last_seen_at__isnull=True))),
        revoked=Count("pk", filter=Q(agent__revoked_at__isnull=False)),
    )


@dataclass(frozen=True)
class StatusCount:
    status: str
    day: int
    week: int


def job_counts(user, now: datetime) -> list[StatusCount]:
    """Jobs of every kind created in the last 24 hours and 7 days, by status (every status, in the
    order of :class:`JobStatus`): one query, each kind's table grouped by status."""
    sites = access.visible_sites(user)
    parts = [
        kind.model.objects.filter(site__in=sites, created_at__gte=now - WEEK)
        .order_by()
        .values("status")
        .annotate(day=Count("created_at", filter=Q(created_at__gte=now - DAY)), week=Count("created_at"))
        for kind in registry.all_kinds()
    ]
    first, *rest = parts
    rows = first.union(*rest, all=True) if rest else first
    day = dict.fromkeys(JobStatus.values, 0)
    week = dict.fromkeys(JobStatus.values, 0)
    for row in rows:
        day[row["status"]] += row["day"]
        week[row["status"]] += row["week"]
    return [StatusCount(status, day[status], week[status]) for status in JobStatus.values]


def recent_failures(user, now: datetime) -> list[dict]:
    """The newest jobs of the last 7 days that failed, timed out or were lost (the job list's rows):
    one query per such status, then the page's jobs as the job list loads them."""
    rows = []
    for status in ATTENTION:
        query = listing.JobQuery(status=status, created_from=now - WEEK)
        rows += listing.job_rows(user, query)[:FAILURES_SHOWN]
    rows.sort(key=lambda row: (row["created"], str(row["id"])), reverse=True)
    return rows[:FAILURES_SHOWN]


@login_required
def dashboard(request):
    """The console's home (docs/architecture.md, "The dashboard")."""
    now = timezone.now()
    failures = recent_failures(request.user, now)
    table = JobTable(failures, orderable=False)
    table.prepare_page(failures)
    counts = job_counts(request.user, now)
    return render(
        request,
        "console/dashboard.html",
        {
            "nav": "dashboard",
            "agents": agent_counts(request.user, now),
            "offline_after": settings.RMM_AGENT_OFFLINE_SECONDS,
            "job_counts": counts,
            "jobs_day": sum(c.day for c in counts),
            "jobs_week": sum(c.week for c in counts),
            "failures_week": sum(c.week for c in counts if c.status in ATTENTION),
            "chart": {
                "statuses": [c.status for c in counts],
                "day": [c.day for c in counts],
                "week": [c.week for c in counts],
            },
            "failures": table,
            "attention": [status.value for status in ATTENTION],
            "may_approve": access.can(request.user, "approve"),
            "first_run": first_run.guide(request.user),
        },
    )
