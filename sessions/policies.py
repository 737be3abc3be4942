"""Per-site session policy: whether sessions are allowed, whether each needs an approver, how
long one may last and stay idle. Policies are versions of an artefact kind (sessions/artefact.py):
a site's policy is its approved version with the highest number; a site without one has the
model's defaults. A pending or rejected version rules nothing."""

from __future__ import annotations

from django.db.models import OuterRef, QuerySet, Subquery

from rmm.artefacts.states import ApprovalStatus
from sessions.models import SessionPolicy

RULES = ("allowed", "approval_required", "max_duration_seconds", "idle_timeout_seconds")


def _in_force(site_id) -> QuerySet[SessionPolicy]:
    return SessionPolicy.objects.filter(site_id=site_id, approval_status=ApprovalStatus.APPROVED).order_by("-version")


def policy_for(site) -> SessionPolicy:
    """The site's policy in force, or an unsaved one with the defaults."""
    return _in_force(site.pk).first() or SessionPolicy(site=site)


def with_policies(sessions: QuerySet) -> QuerySet:
    """Sessions with their site's policy in force read in the same query (one subquery per rule),
    for :func:`loaded_policy`."""
    in_force = _in_force(OuterRef("site_id"))
    return sessions.annotate(**{f"policy_{rule}": Subquery(in_force.values(rule)[:1]) for rule in RULES})


def loaded_policy(session) -> SessionPolicy:
    """The policy of a session fetched through :func:`with_policies` (no query), or the defaults."""
    policy = SessionPolicy(site_id=session.site_id)
    for rule in RULES:
        value = getattr(session, f"policy_{rule}")
        if value is not None:
            setattr(policy, rule, value)
    return policy
