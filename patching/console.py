"""The console's patching pages: fleet patch compliance, and a patch job's rollout (its request
and its batch's progress per ring, the console's batch view reused). An asset's patches are a
panel on its page (registered in ``PatchingConfig.ready``)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render

from patching import jobs, selectors
from patching.models import PatchInstallJob, PatchJob
from rmm.access import roles as access
from rmm.engine.services import batches

ROLLOUT_ROWS = 500


@login_required
def compliance_page(request):
    """Per site the user may see: how many scanned assets are fully patched, per severity."""
    rows = selectors.compliance(request.user)
    sites: dict[str, list] = {}
    for row in rows:
        sites.setdefault(row.site, []).append(row)
    recent = (
        PatchJob.objects.filter(site__in=access.visible_sites(request.user))
        .select_related("site", "requested_by")
        .order_by("-created_at")[:20]
    )
    return render(request, "patching/compliance.html", {"nav": "patching", "sites": sites, "recent": recent})


@login_required
def rollout_page(request, patch_job_id):
    """A patch job's request, its batch's progress per ring and each asset's job."""
    request_ = (
        PatchJob.objects.filter(pk=patch_job_id, site__in=access.visible_sites(request.user))
        .select_related("site", "requested_by", "decided_by", "batch__site", "batch__requested_by")
        .first()
    )
    if request_ is None:
        raise Http404
    batch = request_.batch
    context = {
        "nav": "patching",
        "patch_job": request_,
        "status": jobs.status_of(request_, batch),
        "jobs": PatchInstallJob.objects.filter(patch_job=request_)
        .select_related("asset")
        .order_by("ring", "asset__hostname")[:ROLLOUT_ROWS],
    }
    if batch is not None:
        context |= {
            "batch": batch,
            "rings": batches.progress(batch),
            "progress": batches.totals([batch])[str(batch.pk)],
        }
    return render(request, "patching/rollout.html", context)
