"""The "Enroll an agent" page: an admin issues an enrollment token for one of its sites (through
:func:`rmm.inventory.services.create_enrollment_token`, as ``rmm_enrollment_token`` does) and is
shown the exact commands that enroll and start an agent with it (docs/agent.md, Enroll)."""

from __future__ import annotations

import shlex

from django import forms
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import render
from django.views.decorators.cache import never_cache

from rmm.access import roles as access
from rmm.console import forms as console_forms
from rmm.history import services as history
from rmm.inventory import services as inventory

PACKAGE_STATE_DIR = "/var/lib/rmm-agent"  # the Debian package's RMM_AGENT_STATE_DIR
CHECKOUT_STATE_DIR = "var/agent-2"  # beside make run's own agent (var/agent)


class EnrollForm(forms.Form):
    site = forms.ModelChoiceField(
        label="Site",
        queryset=None,
        to_field_name="name",
        empty_label=None,
        help_text="The endpoint's asset joins this site.",
        error_messages={"invalid_choice": "Choose one of your sites from the list."},
    )
    uses = forms.IntegerField(
        label="Agents that may enroll with it",
        min_value=1,
        max_value=10000,
        initial=1,
        help_text=f"It expires after {settings.RMM_ENROLLMENT_TOKEN_TTL_HOURS} hours whatever its uses.",
    )

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["site"].queryset = access.visible_sites(user).order_by("name")


def commands(server: str, token: str) -> dict[str, str]:
    """The commands that enroll and start an agent: on an endpoint with the Debian package, and
    from a checkout of this repository beside ``make run``'s own agent."""
    enroll = ["enroll", "--server", server, "--token", token, "--state-dir"]
    package = "sudo PYTHONPATH=/opt/rmm-agent/current python3 -m rmm_agent "
    checkout = ".venv/bin/python -m rmm_agent "
    return {
        "package_enroll": package + shlex.join([*enroll, PACKAGE_STATE_DIR]),
        "package_run": "sudo systemctl start rmm-agent",
        "checkout_enroll": checkout + shlex.join([*enroll, CHECKOUT_STATE_DIR]),
        "checkout_run": checkout + shlex.join(["run", "--state-dir", CHECKOUT_STATE_DIR]),
    }


@login_required
@never_cache
def enroll_page(request):
    """Admins only (refusal recorded); a bad site or number answers 400 beside its field. The
    token is shown once: only its hash is kept."""
    if not access.can(request.user, "manage_agents"):
        history.record_refusal(request.user, "enrollment_token.create", reason="role may not enroll agents")
        raise PermissionDenied("Only an admin may enroll agents.")
    form = EnrollForm(request.POST or None, user=request.user)
    context = {"nav": "assets", "form": form}
    status = 200
    if request.method == "POST":
        issued, status = console_forms.submit(
            form,
            lambda data: inventory.create_enrollment_token(data["site"], request.user, max_uses=data["uses"]),
        )
        if issued is not None:
            row, token = issued
            server = request.build_absolute_uri("/").rstrip("/")
            context.update(token=row, site=row.site, commands=commands(server, token))
    return render(request, "console/enroll.html", context, status=status)
