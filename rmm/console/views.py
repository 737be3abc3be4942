"""The technician's console: jobs of every kind, for the sites the user may see, live."""

from heapq import merge
from itertools import islice

from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render

from rmm import access
from rmm.engine import registry
from rmm.engine.states import ACTIVE, FINAL

PAGE = 100


def _jobs_of(kind, user):
    return (
        kind.model.objects.filter(site__in=access.visible_sites(user))
        .select_related(*kind.select_related)
        .order_by("-created_at")
    )


@login_required
def job_list(request):
    streams = [((kind, job) for job in _jobs_of(kind, request.user)[:PAGE]) for kind in registry.all_kinds()]
    rows = [
        {"kind": kind.name, "job": job, "description": kind.describe(job)}
        for kind, job in islice(merge(*streams, key=lambda pair: pair[1].created_at, reverse=True), PAGE)
    ]
    return render(request, "console/jobs.html", {"rows": rows})


def _job_or_404(request, kind_name, job_id):
    try:
        kind = registry.get(kind_name)
    except KeyError:
        raise Http404 from None
    job = _jobs_of(kind, request.user).filter(pk=job_id).first()
    if job is None:
        raise Http404
    return kind, job


def _context(request, kind_name, job_id):
    kind, job = _job_or_404(request, kind_name, job_id)
    return {
        "kind": kind.name,
        "job": job,
        "description": kind.describe(job),
        "detail_template": kind.detail_template,
        "is_final": job.status in FINAL,
        "is_active": job.status in ACTIVE,
    }


@login_required
def job_detail(request, kind, job_id):
    return render(request, "console/job.html", _context(request, kind, job_id))


@login_required
def job_fragment(request, kind, job_id):
    """The job's detail block alone, fetched by the page when a live event says it changed."""
    return render(request, "console/job_fragment.html", _context(request, kind, job_id))
