"""The second factor and lockouts, recorded. Every code that is accepted or refused, and every
sign-in refused by a lockout, is an event in the execution history: sign-in refusals are evidence.

Codes are checked by django-otp alone (``django_otp.verify_token``): it locks the device row while it
checks, refuses a code that was already used, and throttles a device after wrong codes (1, 2, 4, 8 …
seconds, ``OTP_TOTP_THROTTLE_FACTOR``).
"""

from __future__ import annotations

import django_otp
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from rmm.access import services as access_services
from rmm.core.errors import Conflict
from rmm.history import services as history
from rmm.inventory import services as inventory

DEVICE_NAME = "authenticator"


def confirmed_device(user) -> TOTPDevice | None:
    return TOTPDevice.objects.filter(user=user, confirmed=True).order_by("pk").first()


def pending_device(user) -> TOTPDevice:
    """The unconfirmed device being set up: made once, so its secret stays the same until confirmed."""
    device = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("pk").first()
    if device is None:
        with transaction.atomic():
            device = TOTPDevice.objects.create(user=user, name=DEVICE_NAME, confirmed=False)
            history.append(user, "signin.otp_device_created", device)
    return device


def check_code(user, device: TOTPDevice, code: str, *, address: str | None) -> tuple[TOTPDevice | None, str]:
    """Check ``code`` against ``device``; an unconfirmed device becomes confirmed by its first good code.

    Returns the device and ``""``, or ``None`` and why the code was refused. Either way it is recorded.
    """
    setup = not device.confirmed
    allowed, throttle = device.verify_is_allowed()
    verified = django_otp.verify_token(user, device.persistent_id, "".join(code.split()))
    payload = {"device": device.persistent_id, "address": address, "setup": setup}
    if verified is None:
        if allowed:
            reason = "wrong code"
        else:
            wait = max(1, int(((throttle or {}).get("locked_until", timezone.now()) - timezone.now()).total_seconds()))
            reason = f"too many wrong codes: try again in {wait} seconds"
        history.record_refusal(user, "signin.otp", device, reason=reason, payload=payload)
        return None, reason
    with transaction.atomic():
        if setup:
            TOTPDevice.objects.filter(pk=verified.pk).update(confirmed=True)
            verified.confirmed = True
        history.append(user, "signin.otp_confirmed" if setup else "signin.otp_verified", verified, payload=payload)
    return verified, ""


def reset_devices(user, *, actor: str) -> int:
    """Remove every TOTP device of ``user`` (a lost phone): the next sign-in sets up a new one."""
    with transaction.atomic():
        devices = list(TOTPDevice.objects.filter(user=user))
        for device in devices:
            history.append(actor, "signin.otp_device_removed", device, payload={"user": user.get_username()})
        TOTPDevice.objects.filter(pk__in=[d.pk for d in devices]).delete()
    return len(devices)


def reset_second_factor(actor, person) -> int:
    """An admin removes ``person``'s devices (an approver or admin who lost their phone), as
    ``rmm_otp_reset`` does on the server; the admin must be allowed to change that person
    (``require_manage``, refusal recorded). A person with no device is told so (409)."""
    access_services.require_manage(actor, person, "signin.otp_reset")
    removed = reset_devices(person, actor=history.actor_of(actor))
    if not removed:
        raise Conflict(f"{person.get_username()} has no second factor set up.")
    return removed


def record_lockout(sender, request, username, ip_address, **kwargs):
    """django-axes' ``user_locked_out``: a sign-in refused because of failed passwords."""
    failures = getattr(request, "axes_failures_since_start", None)
    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    if failures is not None and failures <= settings.AXES_FAILURE_LIMIT:
        reason = f"{failures} failed sign-ins: locked out for {minutes} minutes"
    else:
        reason = "sign-in attempt while locked out"
    subject = get_user_model().objects.filter(username=username).first() if username else None
    # Counted per address in a window, as the agent protocol's unknown callers are: one event for
    # the lockout, then one that counts the attempts made during it (docs/security.md).
    inventory.record_unauthenticated_refusal(
        ip_address or "",
        "signin.locked_out",
        subject,
        reason=reason,
        payload={"username": username or "", "path": request.path, "failures": failures},
    )
