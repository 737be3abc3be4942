"""Admins, approvers and superusers act in the console and the admin only after a second factor.

After django-otp's ``OTPMiddleware`` (which sets ``request.user.is_verified()``), a signed-in person who
needs a second factor and has not verified one in this session is sent to set up a TOTP device (the
first time) or to enter a code; a session-authenticated API call is answered 403 instead.

Not asked: the sign-in and sign-out pages (console and admin), the second-factor pages themselves,
static files, the health probes, the agent protocol (agents authenticate with their own credential)
and API calls that carry a bearer token (DRF authenticates those by the token, before and instead
of the session).
"""

from __future__ import annotations

from functools import cached_property
from urllib.parse import urlencode

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.http import HttpResponseRedirect, JsonResponse
from django.urls import reverse

from rmm.core.dependencies import PROBE_PATHS
from rmm.signin.policy import needs_second_factor
from rmm.signin.services import confirmed_device

API_PREFIX = "/api/"
AGENT_PREFIX = "/api/v1/agent/"


class SecondFactorMiddleware:
    # Both, like the middleware around it: under ASGI a sync-only link would put the rest of the
    # request in a nested event loop.
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    @cached_property
    def exempt_paths(self) -> frozenset[str]:
        names = ("login", "logout", "admin:login", "admin:logout", "signin:setup", "signin:verify")
        return frozenset(reverse(name) for name in names)

    def exempt(self, request) -> bool:
        path = request.path_info
        if path in self.exempt_paths or path.startswith(AGENT_PREFIX) or path in PROBE_PATHS:
            return True
        if path.startswith("/" + settings.STATIC_URL.lstrip("/")):
            return True
        return path.startswith(API_PREFIX) and request.headers.get("Authorization", "").startswith("Bearer ")

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        if not self.exempt(request):
            refusal = self.check(request, request.user)
            if refusal is not None:
                return refusal
        return self.get_response(request)

    async def __acall__(self, request):
        if not self.exempt(request):
            refusal = await sync_to_async(self.check)(request, await request.auser())
            if refusal is not None:
                return refusal
        return await self.get_response(request)

    def check(self, request, user):
        """None when the request may go on; otherwise where to go instead."""
        if not needs_second_factor(user) or user.is_verified():
            return None
        if request.path_info.startswith(API_PREFIX) and not request.path_info.startswith(reverse("api-docs")):
            return JsonResponse(
                {"detail": "This account needs a second factor: sign in with a code, or use an API token."},
                status=403,
            )
        page = "signin:verify" if confirmed_device(user) else "signin:setup"
        return HttpResponseRedirect(f"{reverse(page)}?{urlencode({'next': request.get_full_path()})}")
