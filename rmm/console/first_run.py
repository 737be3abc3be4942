"""The first-run guide on the dashboard: on a fresh installation, the steps from ``make run`` to a
finished job (README, "First job in five minutes"), each ticked from the database's real state and
linked to the page that does it. Once any job has finished, the guide is gone for everyone.

A constant number of queries: at most one per job kind for whether a job has finished (on a
working installation the first to answer yes ends the guide), then one per job kind for the
user's jobs, one each for the people, the authority and the agents, and one per artefact kind
(script versions). What a step counts is limited to the user's sites wherever it has a site."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import Group
from django.db.models import Count, Q
from django.urls import reverse

from rmm.access import roles as access
from rmm.artefacts import registry as artefact_kinds
from rmm.artefacts.states import ApprovalStatus
from rmm.authority.models import AuthorityStatus, PsaTask
from rmm.engine import registry
from rmm.engine.states import FINAL
from rmm.inventory.models import Agent


@dataclass(frozen=True)
class Step:
    key: str
    title: str
    who: str
    url: str
    done: bool


def _any_finished() -> bool:
    """Whether a job anywhere has finished: an EXISTS per kind, stopping at the first that says
    so (on a fleet's database, the first; a count here scanned a million jobs on every visit to
    the dashboard)."""
    return any(kind.model.objects.filter(status__in=FINAL).exists() for kind in registry.all_kinds())


def guide(user) -> list[Step] | None:
    """The steps in the README's order, or None once a job has finished."""
    if _any_finished():
        return None
    sites = access.visible_sites(user)
    has_job = any(kind.model.objects.filter(site__in=sites).exists() for kind in registry.all_kinds())
    roles = set(
        Group.objects.filter(user__is_active=True, name__in=("technician", "approver")).values_list("name", flat=True)
    )
    # The guide's steps are about scripts: other artefact kinds (session policies, packages, keys)
    # neither write one nor belong to every site.
    counts = artefact_kinds.get("script_version").model.objects.aggregate(
        written=Count("pk"), approved=Count("pk", filter=Q(approval_status=ApprovalStatus.APPROVED))
    )
    written, approved = counts["written"], counts["approved"]
    authority = PsaTask.objects.filter(
        case__site__in=sites, status=AuthorityStatus.APPROVED, case__status=AuthorityStatus.APPROVED
    ).exists()
    agent = Agent.objects.filter(
        asset__site__in=sites, revoked_at__isnull=True, asset__retired_at__isnull=True
    ).exists()
    return [
        Step(
            "people",
            "Add a technician and an approver",
            "an admin",
            reverse("console:people"),
            roles == {"technician", "approver"},
        ),
        Step(
            "authority",
            "Record a case and a task on the local authority page",
            "a person holding the psa role (the demo admin does)",
            reverse("authority:local"),
            authority,
        ),
        Step("script", "Write a script", "the technician", reverse("scripting:editor"), written > 0),
        Step(
            "approval",
            "Approve the script",
            "the approver, not its author",
            reverse("approval-queue"),
            approved > 0,
        ),
        Step(
            "agent", "Enroll an agent", "an admin (make run enrolled this machine's)", reverse("console:enroll"), agent
        ),
        Step(
            "job",
            "Run the script on the agent's asset and watch it finish",
            "the technician",
            reverse("scripting:run"),
            has_job,
        ),
    ]
