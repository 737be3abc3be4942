"""Console form: a technician runs an approved script version on an asset, on a PSA task's authority."""

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render

from rmm.access import roles as access
from rmm.artefacts.states import ApprovalStatus
from rmm.authority.models import AuthorityStatus, PsaTask
from rmm.console.asset_picker import AssetField
from rmm.core.errors import ServiceError
from scripting import services
from scripting.models import Script


def _choice(label: str, empty_label: str, required: str, invalid: str) -> forms.ModelChoiceField:
    """A drop-down whose errors say, in plain words, what to choose."""
    return forms.ModelChoiceField(
        queryset=Script.objects.none(),  # the form sets the user's own
        label=label,
        empty_label=empty_label,
        error_messages={"required": required, "invalid_choice": invalid},
    )


class RunScriptForm(forms.Form):
    script = _choice(
        "Script (approved versions)",
        "choose a script",
        "Choose the script to run.",
        "Choose one of the approved scripts from the list.",
    )
    asset = AssetField(label="Asset")
    psa_task = _choice(
        "PSA task (authority)",
        "choose a task",
        "Choose the PSA task that authorises the job.",
        "Choose one of the approved PSA tasks from the list.",
    )

    def __init__(self, user, *args, **kwargs):
        super().__init__(*args, **kwargs)
        sites = access.visible_sites(user)
        self.fields["script"].queryset = Script.objects.filter(approval_status=ApprovalStatus.APPROVED)
        self.fields["asset"].for_user(user)
        self.fields["psa_task"].queryset = PsaTask.objects.filter(
            case__site__in=sites, status=AuthorityStatus.APPROVED, case__status=AuthorityStatus.APPROVED
        ).select_related("case")


@login_required
def run_script(request):
    """Bad input answers 400 with each field's error beside it; a refusal by the service, its
    status (403, 409) with the error beside the field it names."""
    # "Run a script here" on an asset's page names the asset
    form = RunScriptForm(request.user, request.POST or None, initial={"asset": request.GET.get("asset")})
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                job = services.create_script_job(
                    request.user,
                    script_id=form.cleaned_data["script"].pk,
                    asset_id=form.cleaned_data["asset"].pk,
                    psa_task_id=form.cleaned_data["psa_task"].pk,
                )
            except ServiceError as exc:
                form.add_error(exc.field if exc.field in form.fields else None, exc.detail)
                status = exc.status_code
            else:
                messages.success(request, f"Job created: {job.status}.")
                return redirect("console:job", kind="script", job_id=job.pk)
    return render(request, "scripting/run.html", {"form": form}, status=status)
