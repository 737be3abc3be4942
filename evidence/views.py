"""Console page for compliance exports: ask for one, watch its progress live, download it."""

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render

from evidence import exports, types
from rmm.access import roles as access
from rmm.core.errors import ServiceError

SHOWN = 50


class ExportForm(forms.Form):
    site = forms.ChoiceField(required=False)
    assets = forms.CharField(
        required=False, help_text="Hostnames or asset ids, separated by commas or spaces; empty for all."
    )
    psa_case = forms.UUIDField(required=False, label="PSA case", help_text="The PSA's case id; empty for all.")
    evidence_types = forms.MultipleChoiceField(
        required=False,
        choices=types.LiveChoices(exportable_only=True),
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every type.",
    )
    since = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}), help_text="From this day")
    until = forms.DateField(
        required=False, widget=forms.DateInput(attrs={"type": "date"}), help_text="Up to, not including, this day"
    )

    def __init__(self, user, *args, **kwargs):
        super().__init__(*args, **kwargs)
        sites = access.visible_sites(user).order_by("name").values_list("name", flat=True)
        self.fields["site"].choices = [("", "All my sites")] + [(name, name) for name in sites]


@login_required
def exports_page(request):
    may_export = access.can(request.user, "export_evidence")
    form = ExportForm(request.user, request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            export = exports.request_export(
                request.user,
                site=data["site"] or None,
                assets=data["assets"].replace(",", " ").split() or None,
                psa_case=data["psa_case"],
                evidence_types=data["evidence_types"] or None,
                since=data["since"].isoformat() if data["since"] else None,
                until=data["until"].isoformat() if data["until"] else None,
            )
        except ServiceError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.detail)
        else:
            messages.success(request, f"Export {export.pk} is queued; its progress shows below.")
            return redirect("evidence:exports")
    return render(
        request,
        "console/evidence_exports.html",
        {
            "form": form,
            "may_export": may_export,
            "exports": exports.visible_exports(request.user)[:SHOWN],
        },
    )
