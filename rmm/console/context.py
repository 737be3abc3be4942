from rmm.access import roles as access
from rmm.artefacts import registry as artefact_kinds
from rmm.artefacts.states import ApprovalStatus
from rmm.engine import registry
from rmm.engine.services import kill_switches
from rmm.engine.states import JobStatus


def engaged_kill_switches(request):
    """Every console page shows the engaged kill switches the user is concerned by."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {"engaged_kill_switches": list(kill_switches.engaged_visible_to(user))}


def pending_approvals(request):
    """The navigation's badge for those who may open the approval queue: what waits there for them
    (versions of every artefact kind, a site's kind's in their sites, jobs of every kind in their
    sites), one count per kind."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or not user.is_staff or not access.can(user, "view"):
        return {"pending_approvals": None}
    sites = access.visible_sites(user)
    count = 0
    for kind in artefact_kinds.all_kinds():
        versions = kind.model.objects.filter(approval_status=ApprovalStatus.PENDING)
        if kind.site:
            versions = versions.filter(**{f"{kind.site}__in": sites})
        count += versions.count()
    count += sum(
        kind.model.objects.filter(status=JobStatus.AWAITING_APPROVAL, site__in=sites).count()
        for kind in registry.all_kinds()
    )
    return {"pending_approvals": count}
