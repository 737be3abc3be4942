"""A person's page, linked from the People page: an admin changes their roles and sites, gives them
a new password, resets their second factor, deactivates (confirmed, with a reason) and
reactivates them. Each form posts to its own address and calls one service
(``rmm.access.services``, ``rmm.signin.services.reset_second_factor``), which decides who may and
records the change or the refusal; a refusal shows beside its field with its status (400, 409),
or is the 403 page."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth import get_user_model, update_session_auth_hash
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from rmm.access import roles as access
from rmm.access import services as access_services
from rmm.access.models import ApiToken
from rmm.console import forms as console_forms
from rmm.console.people import EVERY_SITE, ROLE_HELP
from rmm.history import services as history
from rmm.signin import services as signin


class AccessForm(forms.Form):
    roles = forms.MultipleChoiceField(
        label="Roles",
        required=False,
        choices=[(role, f"{role}: {ROLE_HELP[role]}") for role in access.ROLES],
        widget=forms.CheckboxSelectMultiple,
        help_text="None: they can sign in but do nothing.",
    )
    sites = forms.MultipleChoiceField(
        label="Sites", required=False, widget=forms.CheckboxSelectMultiple, help_text="Where they may see and act."
    )

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.sites = {site.name: site for site in access.visible_sites(user).order_by("name")}
        choices = [(EVERY_SITE, "Every site, present and future")] if access.sees_all_sites(user) else []
        self.fields["sites"].choices = choices + [(name, name) for name in self.sites]

    def chosen(self) -> dict:
        names = set(self.cleaned_data["sites"])
        return {
            "roles": set(self.cleaned_data["roles"]),
            "every_site": EVERY_SITE in names,
            "sites": {self.sites[name] for name in names - {EVERY_SITE}},
        }


class PasswordForm(forms.Form):
    password = forms.CharField(
        label="New password",
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text="Give it to them; their open sessions end.",
    )


class DeactivateForm(forms.Form):
    reason = forms.CharField(
        label="Why are they deactivated?",
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Kept in their history.",
        error_messages={"required": "Say why: it is kept in their history."},
    )
    confirm = forms.BooleanField(
        label="Yes: they cannot sign in, their sessions end and their API tokens are revoked.",
        error_messages={"required": "Tick the box to confirm."},
    )


def _person(request, person_id):
    """The person, for an admin; anyone else gets the 403 page (recorded)."""
    if not access.can(request.user, "manage_access"):
        history.record_refusal(request.user, "user.view", reason="role may not manage people")
        raise PermissionDenied("Only an admin may manage people.")
    return get_object_or_404(get_user_model(), pk=person_id)


def _page(request, person, status: int = 200, **bound):
    """The person's page, with any form given bound (its errors beside its fields)."""
    every, pks = access_services.grants_of(person)
    sites = access.visible_sites(request.user).filter(pk__in=pks).values_list("name", flat=True)
    roles = sorted(person.groups.filter(name__in=access.ALL).values_list("name", flat=True))
    access_form = bound.get("access_form") or AccessForm(
        user=request.user,
        initial={"roles": roles, "sites": ([EVERY_SITE] if every else []) + list(sites)},
    )
    context = {
        "nav": "people",
        "person": person,
        "roles": roles,
        "every_site": every,
        "site_names": sorted(sites),
        "other_sites": len(pks) - len(sites),  # granted sites the admin does not see: not named
        "second_factor": signin.confirmed_device(person) is not None,
        "live_tokens": ApiToken.objects.filter(user=person, revoked_at__isnull=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))
        .count(),
        "why_not": access_services.why_not_manage(request.user, person),
        "access_form": access_form,
        "password_form": bound.get("password_form") or PasswordForm(),
        "error": " ".join(bound["button_form"].non_field_errors()) if "button_form" in bound else "",
    }
    return render(request, "console/person.html", context, status=status)


@login_required
@never_cache
def person_page(request, person_id):
    """Who they are, what they may do and where, and the forms that change it."""
    return _page(request, _person(request, person_id))


def _post(request, person, form, call, said, bound_as: str):
    """``call(form.cleaned_data)`` through :func:`console_forms.submit`: then the person's page says
    ``said(result)``; or it shows ``form`` again (as ``bound_as``) with its errors and status."""
    result, status = console_forms.submit(form, call)
    if status != 200:
        return _page(request, person, status, **{bound_as: form})
    messages.success(request, said(result))
    return redirect("console:person", person_id=person.pk)


@login_required
@require_POST
def person_access(request, person_id):
    person = _person(request, person_id)
    form = AccessForm(request.POST, user=request.user)
    return _post(
        request,
        person,
        form,
        lambda data: access_services.change_access(request.user, person, **form.chosen()),
        lambda changes: f"{person.get_username()}: {', '.join(changes) or 'nothing changed'}.",
        "access_form",
    )


@login_required
@require_POST
def person_password(request, person_id):
    person = _person(request, person_id)

    def set_password(data):
        access_services.set_password(request.user, person, data["password"])
        if person.pk == request.user.pk:
            update_session_auth_hash(request, person)  # the admin's own session stays signed in

    return _post(
        request,
        person,
        PasswordForm(request.POST),
        set_password,
        lambda _: f"{person.get_username()} has a new password; give it to them.",
        "password_form",
    )


@login_required
@never_cache
def person_deactivate(request, person_id):
    """The confirmation (GET) and the deactivation (POST)."""
    person = _person(request, person_id)
    form = DeactivateForm(request.POST if request.method == "POST" else None)
    status = 200
    if request.method == "POST":
        revoked, status = console_forms.submit(
            form, lambda data: access_services.deactivate_person(request.user, person, data["reason"])
        )
        if status == 200:
            messages.success(request, f"{person.get_username()} is deactivated; {revoked} API token(s) revoked.")
            return redirect("console:person", person_id=person.pk)
    why_not = access_services.why_not_manage(request.user, person)
    context = {"nav": "people", "person": person, "form": form, "why_not": why_not}
    return render(request, "console/person_deactivate.html", context, status=status)


# The forms with nothing but their button: what each calls, and what the page says when it is done.
BUTTONS = {
    "second-factor": (
        signin.reset_second_factor,
        "{}'s second factor is removed: they set up a new one at their next sign-in.",
    ),
    "reactivate": (access_services.reactivate_person, "{} may sign in again."),
}


@login_required
@require_POST
def person_button(request, person_id, action: str):
    """``BUTTONS[action]``: a form with nothing but its button, whose refusal shows at the page's top."""
    person = _person(request, person_id)
    call, done = BUTTONS[action]
    return _post(
        request,
        person,
        forms.Form({}),
        lambda data: call(request.user, person),
        lambda _: done.format(person.get_username()),
        "button_form",
    )
