"""The kill switch page: engage one on a site or an asset picked from the user's own (the asset
with the console's asset picker; or, for someone who sees every site, globally), after a
confirmation step; the switches engaged now, and the history of those engaged and released, by
whom, when and why."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render

from rmm.access import roles as access
from rmm.console.asset_picker import AssetField
from rmm.core.errors import ServiceError
from rmm.engine.models import KillSwitchScope
from rmm.engine.services import kill_switches
from rmm.history import services as history

HISTORY = 50  # the newest switches on the page

SCOPE_CHOICES = [
    (KillSwitchScope.SITE.value, "One site"),
    (KillSwitchScope.ASSET.value, "One asset"),
    (KillSwitchScope.GLOBAL.value, "Everything: every site"),
]


def check_scope(form: forms.BaseForm, data: dict) -> None:
    """The site or the asset that the scope needs, and neither for everything: each error beside
    its field (this page and the admin's form)."""
    scope = data.get("scope")
    if scope == KillSwitchScope.SITE and not data.get("site") and "site" not in form.errors:
        form.add_error("site", "Choose the site to stop.")
    if scope == KillSwitchScope.ASSET and not data.get("asset") and "asset" not in form.errors:
        form.add_error("asset", "Choose the asset to stop.")
    if scope == KillSwitchScope.GLOBAL and (data.get("site") or data.get("asset")):
        form.add_error("scope", "Everything means every site: leave the site and the asset empty.")


def target_of(data: dict) -> str | None:
    """The kill switch service's ``target``: the site's name, the asset's id, or none for everything."""
    if data["scope"] == KillSwitchScope.SITE:
        return data["site"].name
    if data["scope"] == KillSwitchScope.ASSET:
        return str(data["asset"].pk)
    return None


class EngageForm(forms.Form):
    """No scope is chosen for the user: the scope and its site or asset must be picked."""

    scope = forms.ChoiceField(
        label="What to stop",
        choices=SCOPE_CHOICES,
        widget=forms.RadioSelect,
        error_messages={"required": "Choose what to stop: a site, an asset or everything."},
    )
    site = forms.ModelChoiceField(
        label="Site",
        queryset=None,
        required=False,
        to_field_name="name",
        empty_label="choose a site",
        error_messages={"invalid_choice": "Choose one of your sites from the list."},
    )
    asset = AssetField(label="Asset", required=False)
    reason = forms.CharField(
        label="Reason",
        widget=forms.Textarea(attrs={"rows": 2}),
        error_messages={"required": "Say why the kill switch is engaged."},
    )

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["site"].queryset = access.visible_sites(user).order_by("name")
        self.fields["asset"].for_user(user)

    def clean(self):
        data = super().clean()
        check_scope(self, data)
        return data

    def target(self) -> str | None:
        return target_of(self.cleaned_data)

    def target_label(self) -> str:
        scope, data = self.cleaned_data["scope"], self.cleaned_data
        if scope == KillSwitchScope.SITE:
            return f"site {data['site'].name}"
        if scope == KillSwitchScope.ASSET:
            return f"asset {self.fields['asset'].label_from_instance(data['asset'])}"
        return "every site"


@login_required
def kill_switch_page(request):
    """Anyone who may operate a site may stop it. A valid form is first shown back for
    confirmation; only a confirmed one engages. Bad input answers 400 with the field's error."""
    may_engage = access.can(request.user, "engage_kill_switch")
    form = EngageForm(request.POST or None, user=request.user)
    status = 200
    if request.method == "POST":
        if not may_engage:
            history.record_refusal(request.user, "kill_switch.engage", reason="role may not engage a kill switch")
            form = None
            status = 403
        elif not form.is_valid():
            status = 400
        elif request.POST.get("confirm") != "yes":
            return render(request, "console/kill_switch_confirm.html", {"form": form, "target": form.target_label()})
        else:
            try:
                switch = kill_switches.engage(
                    request.user,
                    scope=form.cleaned_data["scope"],
                    target=form.target(),
                    reason=form.cleaned_data["reason"],
                )
            except ServiceError as exc:
                form.add_error(exc.field if exc.field in form.fields else None, exc.detail)
                status = exc.status_code
            else:
                messages.success(request, f"Kill switch engaged on {switch.target_label}.")
                return redirect("console:kill-switches")
    if status == 403:
        messages.error(request, "Your role may not engage a kill switch.")
    return render(
        request,
        "console/kill_switches.html",
        {
            "nav": "kill-switches",
            "form": form if may_engage else None,
            "may_release": access.can(request.user, "approve"),
            "history": kill_switches.visible_to(request.user)[:HISTORY],
        },
        status=status,
    )
