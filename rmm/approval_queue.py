"""The approval queue in the admin: pending script versions and pending jobs of every kind,
filtered by kind, site and age, decided here with the same services as everywhere else."""

from __future__ import annotations

import difflib
from datetime import timedelta

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.utils import timezone

from rmm import access
from rmm.engine import registry
from rmm.engine import services as engine
from rmm.engine.states import JobStatus
from rmm.errors import Forbidden, ServiceError
from rmm.history import services as history
from scripting import services as scripting
from scripting.models import ApprovalStatus, Script

AGES = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "72h": timedelta(hours=72)}
VERSION_KIND = "script_version"


def version_diff(script: Script) -> str:
    """Unified diff from the previous version of the same script ("" for a first version)."""
    previous = Script.objects.filter(name=script.name, version__lt=script.version).order_by("-version").first()
    if previous is None:
        return ""
    return "".join(
        difflib.unified_diff(
            previous.content.splitlines(keepends=True),
            script.content.splitlines(keepends=True),
            fromfile=f"{script.name} v{previous.version}",
            tofile=f"{script.name} v{script.version}",
        )
    )


def _pending(user, kind: str, site: str, age: str) -> list[dict]:
    cutoff = timezone.now() - AGES[age] if age in AGES else None
    items = []
    if kind in ("", VERSION_KIND):
        versions = Script.objects.filter(approval_status=ApprovalStatus.PENDING).select_related("author")
        if cutoff:
            versions = versions.filter(created_at__lte=cutoff)
        items += [
            {"kind": VERSION_KIND, "obj": v, "created_at": v.created_at, "requester": v.author, "diff": version_diff(v)}
            for v in versions.order_by("created_at")[:200]
        ]
    sites = access.visible_sites(user)
    if site:
        sites = sites.filter(name=site)
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
            }
            for j in jobs.order_by("created_at")[:200]
        ]
    return sorted(items, key=lambda item: item["created_at"])


def _decide(request) -> None:
    kind, pk, decision = request.POST.get("kind"), request.POST.get("id"), request.POST.get("decision")
    reason = request.POST.get("reason", "")
    if kind == VERSION_KIND:
        obj = Script.objects.filter(pk=pk).first()
        if obj is None:
            raise ServiceError("No such script version.")
        if decision == "approve":
            scripting.approve_script(obj, request.user)
        else:
            scripting.reject_script(obj, request.user, reason)
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
            "kinds": [VERSION_KIND] + [k.name for k in registry.all_kinds()],
            "sites": access.visible_sites(request.user).values_list("name", flat=True),
            "ages": list(AGES),
            "chosen": {"kind": kind, "site": site, "age": age},
            "may_decide": access.can(request.user, "approve"),
        },
    )
