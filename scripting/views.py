"""Console form: a technician runs an approved script version on an asset, on a PSA task's authority."""

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render

from rmm.access import roles as access
from rmm.authority.models import AuthorityStatus, PsaTask
from rmm.core.errors import ServiceError
from rmm.inventory.models import Asset
from scripting import services
from scripting.models import ApprovalStatus, Script


class RunScriptForm(forms.Form):
    script = forms.ModelChoiceField(queryset=Script.objects.none())
    asset = forms.ModelChoiceField(queryset=Asset.objects.none())
    psa_task = forms.ModelChoiceField(queryset=PsaTask.objects.none(), label="PSA task (authority)")

    def __init__(self, user, *args, **kwargs):
        super().__init__(*args, **kwargs)
        sites = access.visible_sites(user)
        self.fields["script"].queryset = Script.objects.filter(approval_status=ApprovalStatus.APPROVED)
        self.fields["asset"].queryset = Asset.objects.filter(site__in=sites, retired_at__isnull=True).select_related(
            "site"
        )
        self.fields["psa_task"].queryset = PsaTask.objects.filter(
            case__site__in=sites, status=AuthorityStatus.APPROVED, case__status=AuthorityStatus.APPROVED
        ).select_related("case")


@login_required
def run_script(request):
    # "Run a script here" on an asset's page names the asset
    form = RunScriptForm(request.user, request.POST or None, initial={"asset": request.GET.get("asset")})
    if request.method == "POST" and form.is_valid():
        try:
            job = services.create_script_job(
                request.user,
                script_id=form.cleaned_data["script"].pk,
                asset_id=form.cleaned_data["asset"].pk,
                psa_task_id=form.cleaned_data["psa_task"].pk,
            )
        except ServiceError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.detail)
        else:
            messages.success(request, f"Job created: {job.status}.")
            return redirect("console:job", kind="script", job_id=job.pk)
    return render(request, "scripting/run.html", {"form": form})
