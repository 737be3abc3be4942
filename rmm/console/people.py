"""The People page: an admin adds the technician and the approver a four-eyes flow needs, with
passwords and roles, in the browser (no ``rmm_token`` or ``changepassword`` on a first run), and
sees everyone with their roles and sites. Creation goes through
:func:`rmm.access.services.create_person`."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache

from rmm.access import roles as access
from rmm.access import services as access_services
from rmm.console import forms as console_forms
from rmm.history import services as history

EVERY_SITE = "*"
ROLE_HELP = {
    "admin": "everything, people and agents included",
    "technician": "writes scripts and runs jobs",
    "approver": "approves script versions and jobs (sets up a second factor at first sign-in)",
    "compliance": "exports evidence",
    "psa": "records PSA cases and tasks (the local authority page)",
    "edr": "an EDR integration",
    "scanner": "a vulnerability scanner integration",
}


class PersonForm(forms.Form):
    username = forms.CharField(label="Username", max_length=150)
    password = forms.CharField(
        label="Password",
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text="Give it to the person; they sign in with it.",
    )
    role = forms.ChoiceField(
        label="Role",
        choices=[(role, f"{role}: {ROLE_HELP[role]}") for role in access.ROLES],
        widget=forms.RadioSelect,
        error_messages={"required": "Choose the person's role."},
    )
    site = forms.ChoiceField(label="Sites", help_text="Where the person may see and act.")

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.sites = {site.name: site for site in access.visible_sites(user).order_by("name")}
        choices = [(EVERY_SITE, "Every site")] if access.sees_all_sites(user) else []
        self.fields["site"].choices = choices + [(name, name) for name in self.sites]

    def chosen_site(self):
        name = self.cleaned_data["site"]
        return None if name == EVERY_SITE else self.sites[name]


@login_required
@never_cache
def people_page(request):
    """Admins only (refusal recorded). Bad input answers 400 beside its field, a taken username 409."""
    if not access.can(request.user, "manage_access"):
        history.record_refusal(request.user, "user.list", reason="role may not manage people")
        raise PermissionDenied("Only an admin may manage people.")
    form = PersonForm(request.POST or None, user=request.user)
    status = 200
    if request.method == "POST":
        person, status = console_forms.submit(
            form,
            lambda data: access_services.create_person(
                request.user,
                username=data["username"],
                password=data["password"],
                role=data["role"],
                site=form.chosen_site(),
            ),
        )
        if person is not None:
            messages.success(request, f"{person.get_username()} added as {form.cleaned_data['role']}.")
            return redirect("console:people")
    context = {"nav": "people", "form": form, "people": access_services.people()}
    return render(request, "console/people.html", context, status=status)
