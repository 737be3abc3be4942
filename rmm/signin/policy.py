"""Who needs a second factor, and whether a session has one. Used by the middleware and the websocket."""

from __future__ import annotations

from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.models import Device

from rmm.access import roles as access

SECOND_FACTOR_ROLES = frozenset({"admin", "approver"})


def needs_second_factor(user) -> bool:
    """People who administer or approve, and superusers, act only with a verified TOTP device."""
    if user is None or not user.is_authenticated:
        return False
    return user.is_superuser or bool(access.roles_of(user) & SECOND_FACTOR_ROLES)


def session_verified(user, session) -> bool:
    """Whether ``session`` holds a confirmed device of ``user`` (what django-otp's middleware checks)."""
    persistent_id = session.get(DEVICE_ID_SESSION_KEY) if session is not None else None
    if not persistent_id:
        return False
    device = Device.from_persistent_id(persistent_id)
    return device is not None and device.user_id == user.pk and device.confirmed
