"""The console's asset page (its agent, its facts by namespace, its job history a page at a time,
what apps add) and retiring an asset from it, with a confirmation. A constant number of queries
per page, whatever the asset's jobs."""

from __future__ import annotations

import json

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render

from rmm.access import roles as access
from rmm.console import lists, panels
from rmm.console.asset_list import visible_assets
from rmm.console.job_list import JobTable
from rmm.core.errors import ServiceError
from rmm.engine.services import listing
from rmm.inventory import services as inventory
from rmm.inventory.models import Agent, AssetFacts

ASSET_JOBS = 20  # jobs per page of the asset's job history


def _asset_or_404(request, asset_id):
    asset = visible_assets(request.user).filter(pk=asset_id).first()
    if asset is None:
        raise Http404
    return asset


@login_required
def asset_detail(request, asset_id):
    """An asset of the user's sites: its agent, facts as reported, its jobs, what apps add. An htmx
    request for another page or sort of its jobs gets the job list alone."""
    asset = _asset_or_404(request, asset_id)
    jobs = JobTable(listing.job_rows(request.user, listing.JobQuery(asset=asset.pk)))
    lists.paginate(request, jobs, per_page=ASSET_JOBS, lazy=True)
    htmx = getattr(request, "htmx", None)
    if htmx and not htmx.history_restore_request:
        return render(request, "console/list.html", {"table": jobs})
    facts = AssetFacts.objects.filter(asset=asset).first()
    agent = Agent.objects.filter(asset=asset).first()
    return render(
        request,
        "console/asset.html",
        {
            "nav": "assets",
            "asset": asset,
            "agent": agent,
            "capabilities": [name for name in agent.capabilities.split(",") if name] if agent else [],
            "facts": facts,
            "sections": fact_sections(facts),
            "table": jobs,
            "panels": [(panel, panel.load(asset, request.user)) for panel in panels.asset_panels()],
            "actions": [] if asset.retired_at else [(a.label, a.url(asset)) for a in panels.asset_actions()],
            "may_retire": asset.retired_at is None and access.can(request.user, "manage_agents"),
            "offline_after": settings.RMM_AGENT_OFFLINE_SECONDS,
        },
    )


def fact_sections(facts: AssetFacts | None) -> list[tuple[str, list[tuple[str, str]]]]:
    """The facts as the agent reported them: one section per namespace when it reports by
    namespace, else its one report, where a key whose value is an object is a section of its own."""
    if facts is None:
        return []
    if facts.namespaces:
        return [(name, _items(body)) for name, body in sorted(facts.namespaces.items())]
    plain = {key: value for key, value in facts.facts.items() if not isinstance(value, dict)}
    sections = [("Reported", _items(plain))] if plain else []
    sections += [(key, _items(value)) for key, value in facts.facts.items() if isinstance(value, dict)]
    return sections


def _items(body: dict) -> list[tuple[str, str]]:
    return [(key, _shown(value)) for key, value in body.items()]


def _shown(value) -> str:
    """A fact's value in plain words: a list of words as a comma-separated list, anything nested
    as JSON (never a Python repr)."""
    if value is None:
        return "—"
    if isinstance(value, str | int | float | bool):
        return str(value)
    if isinstance(value, list) and all(isinstance(item, str | int | float) for item in value):
        return ", ".join(map(str, value))
    return json.dumps(value, sort_keys=True)


class RetireForm(forms.Form):
    reason = forms.CharField(
        label="Why is it retired?",
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Kept in the asset's history.",
    )
    confirm = forms.BooleanField(
        label="Yes: revoke its agent, abort its queued and running work, and remove it from the active lists.",
        error_messages={"required": "Tick the box to confirm."},
    )


@login_required
def asset_retire(request, asset_id):
    """Retiring an asset, confirmed: the form (GET) and the retirement (POST) through
    ``inventory.retire_asset``, which decides who may and records a refusal."""
    asset = _asset_or_404(request, asset_id)
    form = RetireForm(request.POST if request.method == "POST" else None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                inventory.retire_asset(request.user, asset, form.cleaned_data["reason"])
            except ServiceError as exc:
                form.add_error(exc.field if exc.field in form.fields else None, exc.detail)
                status = exc.status_code
            else:
                messages.success(request, f"{asset.hostname} retired: its agent is revoked.")
                return redirect("console:asset", asset_id=asset.pk)
        else:
            status = 400
    return render(
        request,
        "console/asset_retire.html",
        {
            "nav": "assets",
            "asset": asset,
            "form": form,
            "may_retire": access.can(request.user, "manage_agents"),
        },
        status=status,
    )
