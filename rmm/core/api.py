"""Shared API plumbing: bad input and service refusals become clear HTTP answers, never a 500.

Every error answer has one shape (``Error`` in the OpenAPI schema, rmm/api_schema.py): a
``detail`` that says why the request as a whole was refused, or each invalid field with its
reasons.
"""

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, JsonResponse
from django.views.defaults import page_not_found
from rest_framework import serializers, status
from rest_framework.exceptions import ParseError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.throttling import SimpleRateThrottle

from rmm.core import dependencies
from rmm.core.errors import ServiceError
from rmm.history import services as history

MAX_PAGE_SIZE = 1000


def exception_handler(exc, context):
    # Imported here: rest_framework.views reads DEFAULT_PARSER_CLASSES, which names this module.
    from rest_framework.views import exception_handler as drf_exception_handler

    unavailable = dependencies.api_response(exc, context)  # a dependency that is down: 503, not 500
    if unavailable is not None:
        return unavailable
    if isinstance(exc, ServiceError):
        return Response(exc.as_dict(), status=exc.status_code)
    if isinstance(exc, DjangoValidationError):
        if hasattr(exc, "error_dict"):
            return Response(exc.message_dict, status=status.HTTP_400_BAD_REQUEST)
        return Response({"detail": " ".join(exc.messages)}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, Http404):
        return Response({"detail": "Not found."}, status=status.HTTP_404_NOT_FOUND)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, list):
        # A validation error raised with a bare message: keep the one shape.
        response.data = {"detail": " ".join(str(message) for message in response.data)}
    return response


def not_found(request, exception=None):
    """Django's 404 for a URL that matches no route: JSON under /api/, the HTML page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=status.HTTP_404_NOT_FOUND)
    return page_not_found(request, exception)


class JsonObjectParser(JSONParser):
    """Request bodies are JSON objects: anything else (a list, a string, a number, ``null``, or
    nesting too deep to parse) is refused with 400 before any view or role check sees it."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deep.") from None
        if not isinstance(data, dict):
            raise ParseError("The body must be a JSON object.")
        return data


class Pagination(LimitOffsetPagination):
    """``limit`` and ``offset``; a ``limit`` above MAX_PAGE_SIZE is clamped to it, and one that is
    not a positive integer gives the default page size."""

    max_limit = MAX_PAGE_SIZE
    limit_query_description = f"Results per page (default 100; larger values give {MAX_PAGE_SIZE})."

    def get_paginated_response_schema(self, schema):
        paginated = super().get_paginated_response_schema(schema)
        paginated["required"] = ["count", "next", "previous", "results"]
        return paginated


class _ReasonBody(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True)


def reason_of(request) -> str:
    """The ``reason`` of a decision's body (``{"reason": "…"}``, rmm.core.api_schema.ReasonSerializer),
    checked to be text a database can store (400 on ``reason`` otherwise). Whether the caller may
    decide, and then that a reason is given, is the service's to say, in that order."""
    body = _ReasonBody(data=request.data)
    body.is_valid(raise_exception=True)
    return body.validated_data.get("reason", "")


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
