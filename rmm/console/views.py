"""The technician's console: jobs of every kind, for the sites the user may see, live (a running
job's output too)."""

import json

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from rmm.access import roles as access
from rmm.access import services as access_services
from rmm.console import lists
from rmm.console.asset_list import AssetFilter, AssetTable
from rmm.console.job_list import JobFilter, JobTable
from rmm.core.errors import ServiceError
from rmm.engine import registry
from rmm.engine.models import Batch, Instruction
from rmm.engine.services import batches, kill_switches, output
from rmm.engine.states import ACTIVE, FINAL, JobStatus
from rmm_agent.protocol import LIVE_STREAMS


@login_required
def job_list(request):
    """Every job the user may see, a batch as one row; the list reloads itself on live events."""
    filterset = JobFilter(request.GET, user=request.user)
    context = {"nav": "jobs", "live": True}
    batch_id = filterset.form.cleaned_data.get("batch") if filterset.is_valid() else None
    if batch_id:
        batch = _visible_batches(request.user).filter(pk=batch_id).first()
        if batch is not None:
            context.update(
                batch=batch, progress=batches.totals([batch])[str(batch.pk)], above_table="console/batch_head.html"
            )
    return lists.list_page(request, JobTable, filterset, "console/jobs.html", context, lazy=True)


def _jobs_of(kind, user):
    return kind.model.objects.filter(site__in=access.visible_sites(user)).select_related(*kind.select_related)


def _job_or_404(request, kind_name, job_id):
    try:
        kind = registry.get(kind_name)
    except KeyError:
        raise Http404 from None
    job = _jobs_of(kind, request.user).filter(pk=job_id).first()
    if job is None:
        raise Http404
    return kind, job


def _live_output(kind, job) -> dict | None:
    """The "Output so far" of a running job: its running step's streamed tail (docs/agent.md,
    Live output), or whether its agent was offered none; None while no step runs."""
    if job.status != JobStatus.RUNNING:
        return None
    running = (
        Instruction.objects.filter(job_kind=kind.name, job_id=job.pk, status=JobStatus.RUNNING)
        .values_list("pk", "payload")
        .first()
    )
    if running is None:
        return None
    instruction_id, payload = running
    offered = json.loads(payload).get("live_output") is True
    held = output.output_so_far(instruction_id) if offered else {}
    empty = output.Tail(text="", total=0)
    return {
        "instruction": instruction_id,
        "offered": offered,
        "streams": [(name, held.get(name, empty)) for name in LIVE_STREAMS],
    }


def _context(request, kind_name, job_id):
    kind, job = _job_or_404(request, kind_name, job_id)
    return {
        "live": _live_output(kind, job),
        "kind": kind.name,
        "job": job,
        "description": kind.describe(job),
        "detail_template": kind.detail_template,
        "is_final": job.status in FINAL,
        "is_active": job.status in ACTIVE,
        # a finished job's evidence (one query), each record's content behind the API's own check
        "evidence": registry.evidence_of(job.pk) if job.status in FINAL else [],
    }


@login_required
def job_detail(request, kind, job_id):
    return render(request, "console/job.html", _context(request, kind, job_id))


@login_required
def job_fragment(request, kind, job_id):
    """The job's detail block alone, fetched by the page when a live event says it changed."""
    return render(request, "console/job_fragment.html", _context(request, kind, job_id))


@login_required
def batch_detail(request, batch_id):
    """A batch's plan, status and progress per ring (a constant number of queries)."""
    batch = _visible_batches(request.user).filter(pk=batch_id).first()
    if batch is None:
        raise Http404
    return render(
        request,
        "console/batch_fragment.html" if request.htmx else "console/batch.html",
        {"batch": batch, "rings": batches.progress(batch), "progress": batches.totals([batch])[str(batch.pk)]},
    )


def _visible_batches(user):
    return Batch.objects.filter(site__in=access.visible_sites(user)).select_related("site", "requested_by")


@login_required
def asset_list(request):
    filterset = AssetFilter(request.GET, user=request.user)
    context = {"nav": "assets", "offline_after": settings.RMM_AGENT_OFFLINE_SECONDS}
    return lists.list_page(request, AssetTable, filterset, "console/assets.html", context)


class ReleaseForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}))


@login_required
@require_POST
def kill_switch_release(request, switch_id):
    switch = kill_switches.engaged_visible_to(request.user).filter(pk=switch_id).first()
    if switch is None:
        raise Http404
    form = ReleaseForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Releasing a kill switch needs a reason.")
        return redirect("console:kill-switches")
    try:
        kill_switches.release(request.user, switch, form.cleaned_data["reason"])
        messages.success(request, f"Kill switch on {switch.target_label} released.")
    except ServiceError as exc:
        messages.error(request, exc.detail)
    return redirect("console:kill-switches")


@login_required
def kill_banner(request):
    return render(request, "console/kill_banner.html")


class TokenForm(forms.Form):
    name = forms.CharField(max_length=200, required=False, help_text="What the token is for.")


def _own_tokens(request):
    return access_services.visible_tokens(request.user).filter(user=request.user)


@login_required
@never_cache
def token_page(request):
    """The signed-in person's own API tokens: their last use, a new one, revoking one.

    An approver's or admin's token is issued only in a session that passed its second factor (the
    sign-in middleware asks for it before any console page; the service checks it again)."""
    form = TokenForm(request.POST or None)
    issued = None
    if request.method == "POST" and form.is_valid():
        verified = getattr(request.user, "is_verified", None)
        try:
            issued, _row = access_services.issue_own_token(
                request.user, name=form.cleaned_data["name"], second_factor=bool(verified and verified())
            )
        except ServiceError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.detail)
        else:
            form = TokenForm()
    return render(
        request,
        "console/tokens.html",
        {
            "form": form,
            "issued": issued,
            "tokens": _own_tokens(request),
            "privileged": access_services.is_privileged(request.user),
            "privileged_hours": settings.RMM_PRIVILEGED_TOKEN_HOURS,
        },
    )


@login_required
@require_POST
def token_revoke(request, token_id):
    token = _own_tokens(request).filter(pk=token_id).first()
    if token is None:
        raise Http404
    try:
        access_services.revoke_token(request.user, token.pk, "revoked on the console")
        messages.success(request, f"Token {token.prefix}… revoked.")
    except ServiceError as exc:
        messages.error(request, exc.detail)
    return redirect("console:tokens")
