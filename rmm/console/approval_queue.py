"""The approval queue in the admin: pending versions of every artefact kind (with their content and
the diff from the previous approved version; a site's kind, of the caller's sites) and pending jobs
of every job kind, filtered by kind, site and age, decided here with the same services as everywhere
else. It knows no kind by name: kinds register with rmm.artefacts.registry and rmm.engine.registry."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.utils import timezone

from rmm.access import roles as access
from rmm.artefacts import registry as artefact_kinds
from rmm.artefacts import services as artefacts
from rmm.core.errors import Forbidden, ServiceError
from rmm.engine import registry
from rmm.engine import services as engine
from rmm.engine.states import JobStatus
from rmm.history import services as history

AGES = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "72h": timedelta(hours=72)}


def _pending(user, kind: str, site: str, age: str) -> list[dict]:
    cutoff = timezone.now() - AGES[age] if age in AGES else None
    sites = access.visible_sites(user)
    if site:
        sites = sites.filter(name=site)
    items = artefacts.pending(kind, created_before=cutoff, sites=sites)
    for job_kind in registry.all_kinds():
        if kind not in ("", job_kind.name):
            continue
        jobs = job_kind.model.objects.filter(status=JobStatus.AWAITING_APPROVAL, site__in=sites).select_related(
            *job_kind.select_related
        )
        if cutoff:
            jobs = jobs.filter(created_at__lte=cutoff)
        items += [
            {
                "kind": job_kind.name,
                "obj": j,
                "created_at": j.created_at,
                "requester": j.requested_by,
                "description": job_kind.describe(j),
                "card": job_card(job_kind, j),
            }
            for j in jobs.select_related("batch").order_by("created_at")[:200]
        ]
    for item in items:
        item["yours"] = item["requester"].pk == user.pk
    return sorted(items, key=lambda item: item["created_at"])


def job_card(job_kind, job) -> list[tuple[str, str]]:
    """What will run where under which authority: the kind's own lines (script, version, sha256),
    then the asset (or how many a batch holds), the site, the PSA case and task."""
    lines = job_kind.card(job) if job_kind.card else [("What", job_kind.describe(job))]
    asset = getattr(job, "asset", None)
    if asset is not None:
        lines.append(("Asset", f"{asset.hostname} (site {job.site.name})"))
    if job.batch_id:
        total = sum(job.batch.ring_sizes)
        lines.append(("Batch", f"one of {total} asset{'s' if total != 1 else ''} in batch {job.batch_id}"))
    lines.append(("Site", job.site.name))
    task = getattr(job, "psa_task", None)
    if task is not None:
        lines.append(("PSA case", f"{task.case.title} ({task.case_id})"))
        lines.append(("PSA task", f"{task.title} ({task.pk})"))
    return lines


def _decide(request) -> None:
    kind, pk, decision = request.POST.get("kind"), request.POST.get("id"), request.POST.get("decision")
    reason = request.POST.get("reason", "")
    artefact_kind = next((k for k in artefact_kinds.all_kinds() if k.name == kind), None)
    if artefact_kind is not None:
        versions = artefact_kind.model.objects.filter(pk=pk)
        if artefact_kind.site:
            versions = versions.filter(**{f"{artefact_kind.site}__in": access.visible_sites(request.user)})
        version = versions.first()
        if version is None:
            raise ServiceError(f"No such {artefact_kind.label}.")
        artefacts.decide(version, request.user, approve=decision == "approve", reason=reason)
        return
    try:
        job_kind = registry.get(kind)
    except KeyError:
        raise ServiceError("Unknown kind.") from None
    job = job_kind.model.objects.filter(pk=pk, site__in=access.visible_sites(request.user)).first()
    if job is None:
        raise ServiceError("No such job.")
    if decision == "approve":
        engine.approve_job(job, request.user)
    else:
        engine.reject_job(job, request.user, reason)


def approval_queue(request, admin_site):
    """Staff with ``view`` may look; deciding needs ``approve``. Every refusal answers 403 and is
    in the history (the services record theirs; this view records the ones it makes)."""
    if not (request.user.is_staff and access.can(request.user, "view")):
        history.record_refusal(request.user, "approval_queue.open", reason="role may not view the approval queue")
        raise PermissionDenied
    if request.method == "POST":
        try:
            _decide(request)
            messages.success(request, "Decision recorded.")
        except Forbidden as exc:
            raise PermissionDenied(exc.detail) from exc
        except ServiceError as exc:
            messages.error(request, exc.detail)
        return redirect(request.get_full_path())
    kind, site, age = request.GET.get("kind", ""), request.GET.get("site", ""), request.GET.get("age", "")
    return TemplateResponse(
        request,
        "admin/approval_queue.html",
        {
            **admin_site.each_context(request),
            "title": "Approval queue",
            "items": _pending(request.user, kind, site, age),
            "kinds": [k.name for k in artefact_kinds.all_kinds()] + [k.name for k in registry.all_kinds()],
            "sites": access.visible_sites(request.user).values_list("name", flat=True),
            "ages": list(AGES),
            "chosen": {"kind": kind, "site": site, "age": age},
            "may_decide": access.can(request.user, "approve"),
        },
    )
