"""The console's one asset picker, for any form that names an asset (the run form, the kill switch).

Hostnames are not unique and a fleet has 100,000 assets, so a drop-down of hostnames will not do:
the picker searches on the server (hostname prefix, any case; a whole asset id; a site) and offers
at most ``PAGE`` matches as radio buttons, each saying hostname, site, OS, online state and a short
id. htmx swaps the matches as the user types; the arrow keys move between them. The chosen asset
stays first in the matches whatever is searched next. Retired assets are never offered, and only
assets of the user's own sites are (``visible_assets``). A search costs a constant number of
queries; ``asset_hostname_prefix`` (inventory's migration 0012) serves it on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from dataclasses import dataclass

from django import forms
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import Q, QuerySet
from django.db.models.functions import Collate, Upper
from django.http import HttpResponseBadRequest
from django.shortcuts import render
from django.template.loader import render_to_string
from django.urls import reverse

from rmm.access import roles as access
from rmm.console.asset_list import visible_assets
from rmm.inventory.models import Asset

PAGE = 20  # matches offered at once: more means "type more of the hostname"
NAME = re.compile(r"^[a-z_]{1,40}$")  # the form field the matches are radio buttons of


@dataclass
class Matches:
    """What the picker offers: the chosen asset (if any) first, then up to ``PAGE`` matches."""

    chosen: Asset | None
    assets: list[Asset]
    more: bool


def pickable_assets(user) -> QuerySet[Asset]:
    """The assets a form may name: of the user's sites, not retired."""
    return visible_assets(user).filter(retired_at__isnull=True)


def _hostname_order() -> Collate:
    """Hostnames in any case, in the order the prefix index keeps them (inventory's migration
    0012), so that one index serves the search and its order."""
    if connection.vendor == "postgresql":
        return Collate(Upper("hostname"), "C")
    return Collate("hostname", "nocase")


def search(assets: QuerySet[Asset], q: str = "", site: str = "", chosen: str = "") -> Matches:
    """Up to ``PAGE`` of ``assets`` whose hostname starts with ``q`` (any case) or whose id is
    ``q``, of the site named ``site`` if given, in hostname order; and the ``chosen`` asset, if it
    is one of ``assets``. Two queries at most, whatever the fleet."""
    q = q.strip()
    found = assets
    if q:
        match = Q(hostname__istartswith=q)
        with contextlib.suppress(ValueError):
            match |= Q(pk=uuid.UUID(q))
        found = found.filter(match)
    if site:
        found = found.filter(site__name=site)
    picked = None
    with contextlib.suppress(ValueError, ValidationError):
        if chosen:
            picked = assets.filter(pk=uuid.UUID(str(chosen))).first()
    if picked is not None:
        found = found.exclude(pk=picked.pk)
    rows = list(found.order_by(_hostname_order(), "hostname", "id")[: PAGE + 1])
    return Matches(chosen=picked, assets=rows[:PAGE], more=len(rows) > PAGE)


class AssetPicker(forms.Widget):
    """A search box, a site filter and the matches as radio buttons named like the field."""

    use_fieldset = True

    def __init__(self, attrs=None):
        super().__init__(attrs)
        self.assets: QuerySet[Asset] = Asset.objects.none()
        self.sites: list[str] = []

    def id_for_label(self, id_):
        """The field's legend names the group; its inputs have labels of their own."""
        return ""

    def render(self, name, value, attrs=None, renderer=None) -> str:
        context = {
            "name": name,
            "id": (attrs or {}).get("id") or f"id_{name}",
            "url": reverse("console:asset-pick"),
            "sites": self.sites,
            "matches": search(self.assets, chosen=value or ""),
        }
        return render_to_string("console/asset_picker.html", context)


class AssetField(forms.ModelChoiceField):
    """An asset of the user's sites, not retired, picked with :class:`AssetPicker`."""

    widget = AssetPicker

    def __init__(self, **kwargs):
        kwargs.setdefault(
            "error_messages",
            {
                "required": "Choose an asset: search by hostname, then pick one.",
                "invalid_choice": "Choose one of your assets from the matches.",
            },
        )
        super().__init__(queryset=Asset.objects.none(), **kwargs)

    def for_user(self, user) -> None:
        """Offer (and accept) the user's own assets only."""
        self.queryset = pickable_assets(user)
        self.widget.assets = self.queryset
        self.widget.sites = list(access.visible_sites(user).order_by("name").values_list("name", flat=True))

    def label_from_instance(self, obj: Asset) -> str:
        return f"{obj.hostname} ({obj.site.name})"


@login_required
def asset_pick(request):
    """The picker's matches for ``<name>_q`` and ``<name>_site`` (htmx swaps them in); ``<name>``, the
    field's name, is the asset chosen so far."""
    name = request.GET.get("name", "asset")
    if not NAME.match(name):
        return HttpResponseBadRequest("name: a form field's name, in lower case letters.")
    matches = search(
        pickable_assets(request.user),
        q=request.GET.get(f"{name}_q", ""),
        site=request.GET.get(f"{name}_site", ""),
        chosen=request.GET.get(name, ""),
    )
    return render(request, "console/asset_picker_matches.html", {"name": name, "matches": matches})
