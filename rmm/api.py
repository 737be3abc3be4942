"""Shared API plumbing: service errors become clear HTTP answers, never a 500."""

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import status
from rest_framework.response import Response
from rest_framework.throttling import SimpleRateThrottle
from rest_framework.views import exception_handler as drf_exception_handler

from rmm import dependencies
from rmm.errors import ServiceError
from rmm.history import services as history


def exception_handler(exc, context):
    unavailable = dependencies.api_response(exc, context)  # a dependency that is down: 503, not 500
    if unavailable is not None:
        return unavailable
    if isinstance(exc, ServiceError):
        return Response(exc.as_dict(), status=exc.status_code)
    if isinstance(exc, DjangoValidationError):
        return Response({"detail": exc.messages}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, Http404):
        return Response({"detail": "Not found."}, status=status.HTTP_404_NOT_FOUND)
    return drf_exception_handler(exc, context)


class TokenRateThrottle(dependencies.RedisFallbackThrottle, SimpleRateThrottle):
    """API calls are rate-limited per token (per session user for the console); 429 with Retry-After."""

    scope = "token"

    def get_cache_key(self, request, view):
        token = getattr(request, "auth", None)
        if token is not None and getattr(token, "pk", None):
            ident = f"token:{token.pk}"
        elif request.user and request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            ident = self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}


class SiteScopedMixin:
    """Objects of sites the caller may not see answer 404, as if they did not exist; the attempt
    is recorded in the history."""

    def get_object(self):
        try:
            return super().get_object()
        except Http404:
            lookup = self.kwargs.get(self.lookup_url_kwarg or self.lookup_field)
            model = self.get_queryset().model
            try:
                exists = model._default_manager.filter(pk=lookup).exists()
            except (DjangoValidationError, ValueError):
                exists = False
            if exists:
                history.record_refusal(
                    self.request.user,
                    "access",
                    reason="object outside the caller's sites",
                    payload={"object": f"{model._meta.label_lower}:{lookup}", "path": self.request.path},
                )
            raise
