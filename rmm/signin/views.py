"""Setting up and entering the second factor (TOTP, django-otp) after the password."""

from __future__ import annotations

from base64 import b32encode
from urllib.parse import urlencode

import django_otp
import segno
from django import forms
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render, resolve_url
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache

from rmm.signin import services
from rmm.signin.policy import needs_second_factor


class CodeForm(forms.Form):
    code = forms.CharField(
        label="Code",
        max_length=16,
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "autofocus": True, "size": 8}
        ),
    )


def _next(request) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return target
    return resolve_url(settings.LOGIN_REDIRECT_URL)


def _address(request) -> str | None:
    return request.META.get("REMOTE_ADDR")


def _check(request, device):
    """Check the posted code; on success the session is verified (with a new session key)."""
    form = CodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        verified, problem = services.check_code(
            request.user, device, form.cleaned_data["code"], address=_address(request)
        )
        if verified is not None:
            request.session.cycle_key()
            django_otp.login(request, verified)
            return form, redirect(_next(request))
        form.add_error("code", f"Refused: {problem}.")
    return form, None


@never_cache
@login_required
def setup(request):
    """First time: a new (unconfirmed) TOTP device, shown as a QR code, confirmed by its first code."""
    user = request.user
    if not needs_second_factor(user) or user.is_verified():
        return redirect(_next(request))
    if services.confirmed_device(user) is not None:
        # Never a second device through the web: whoever knows only the password must not add one.
        return redirect(f"{reverse('signin:verify')}?{urlencode({'next': _next(request)})}")
    device = services.pending_device(user)
    form, done = _check(request, device)
    if done:
        return done
    uri = device.config_url
    context = {
        "form": form,
        "next": _next(request),
        "uri": uri,
        "secret": b32encode(device.bin_key).decode(),
        "qr": segno.make(uri, error="m").svg_inline(scale=5, border=4, light="#fff", title="TOTP set-up code"),
    }
    return render(request, "signin/setup.html", context, status=400 if form.errors else 200)


@never_cache
@login_required
def verify(request):
    """Enter the 6-digit code of the confirmed device."""
    user = request.user
    if not needs_second_factor(user) or user.is_verified():
        return redirect(_next(request))
    device = services.confirmed_device(user)
    if device is None:
        return redirect(f"{reverse('signin:setup')}?{urlencode({'next': _next(request)})}")
    form, done = _check(request, device)
    if done:
        return done
    return render(
        request, "signin/verify.html", {"form": form, "next": _next(request)}, status=400 if form.errors else 200
    )


def locked_out(request, original_response=None, credentials=None):
    """django-axes' lockout answer (``AXES_LOCKOUT_CALLABLE``): a clear page, 429."""
    from axes.helpers import get_client_username

    context = {
        "username": get_client_username(request, credentials) or "",
        "minutes": int(settings.AXES_COOLOFF_TIME.total_seconds() // 60),
        "failure_limit": settings.AXES_FAILURE_LIMIT,
    }
    return render(request, "registration/locked_out.html", context, status=429)
