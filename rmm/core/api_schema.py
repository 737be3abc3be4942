"""The OpenAPI schema (drf-spectacular's DEFAULT_SCHEMA_CLASS): exact about every answer.

Besides its success, each operation documents the errors of the one shape that rmm.core.api's
exception handler produces (``Error``), for the reasons that apply to it (``ApiSchema``). Views
add the refusals only they know of (a 409, a 403 on a read) with
``extend_schema(responses={..., 409: refusal("...")})``.

This module must not import drf_spectacular.views or rest_framework.views: both read the
DRF settings that name it.
"""

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

PAGINATION_PARAMETERS = {"limit", "offset"}


class ErrorSerializer(serializers.Serializer):
    """Why the request was refused: ``detail`` for the request as a whole, or each invalid field
    with its reasons (for a list or an object field, the reasons of each invalid item)."""

    detail = serializers.CharField(required=False)


class ErrorSchema(OpenApiSerializerExtension):
    target_class = ErrorSerializer

    def map_serializer(self, auto_schema, direction):
        return {
            "type": "object",
            "description": ErrorSerializer.__doc__.replace("\n    ", " ").strip(),
            "properties": {"detail": {"type": "string", "description": "The reason, for the request as a whole."}},
            "additionalProperties": {
                "description": "An invalid field: its reasons, or its invalid items' reasons by index or key.",
                "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "object"}],
            },
            "example": {"psa_task_id": ["No authority: PSA task is closed, not approved."]},
        }


class ReasonSerializer(serializers.Serializer):
    """The body of a decision that needs a reason (read by rmm.core.api.reason_of)."""

    reason = serializers.CharField(help_text="Why. Without one the answer is 400 on reason.")


def refusal(description: str) -> OpenApiResponse:
    """An error answer of an operation, in the one error shape."""
    return OpenApiResponse(ErrorSerializer, description=description)


# Job creation of every kind: an asset it would run on was retired (rmm.inventory.retire_asset).
RETIRED_TARGET = refusal("An asset the job would run on is retired; the field names it.")


class ApiSchema(AutoSchema):
    """drf-spectacular's AutoSchema, plus the error answers each operation can give.

    Every operation needs a caller (401) and is rate-limited (429); one that changes state checks
    the caller's role and the laws (403); one with a path parameter looks an object up (404);
    one with a body or filters validates them (400), and a body must be JSON (415). Response
    bodies name every field they carry as required (serializers give each field, null or not).
    """

    def get_operation(self, path, path_regex, path_prefix, method, registry):
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None:
            return None
        parameters = operation.get("parameters", [])
        has_body = "requestBody" in operation
        errors = {
            "401": ("No valid credentials: no token, or a token that is unknown, expired or revoked.", None),
            "429": (
                "Too many requests for this token (RMM_API_RATE); retry after the seconds Retry-After gives.",
                {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}},
            ),
        }
        if self.method not in ("GET", "HEAD", "OPTIONS"):
            errors["403"] = ("Refused: the caller's role, a law (four eyes, the kill switch) or CSRF.", None)
        if any(p["in"] == "path" for p in parameters):
            errors["404"] = ("No such object among those the caller may see (or a malformed id).", None)
        if has_body or any(p["in"] == "query" and p["name"] not in PAGINATION_PARAMETERS for p in parameters):
            errors["400"] = ("Invalid input: each invalid field named with its reasons.", None)
        if has_body:
            errors["415"] = ("The body is not sent as application/json.", None)
        ref = self.resolve_serializer(ErrorSerializer, "response").ref
        for code, (description, headers) in errors.items():
            if code in operation["responses"]:
                continue
            answer = {"description": description, "content": {"application/json": {"schema": ref}}}
            if headers:
                answer["headers"] = headers
            operation["responses"][code] = answer
        operation["responses"] = dict(sorted(operation["responses"].items()))
        return operation

    def _map_basic_serializer(self, serializer, direction):
        schema = super()._map_basic_serializer(serializer, direction)
        if direction == "response" and schema.get("properties"):
            schema["required"] = sorted(schema["properties"])
        return schema


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """``Authorization: Bearer rmm_…`` (rmm.access.auth.BearerTokenAuthentication) in the schema."""

    target_class = "rmm.access.auth.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "rmm_<prefix>_<secret>",
            "description": (
                "An API token, issued on the server (`manage.py rmm_token USERNAME --role ROLE --site NAME`) "
                "or on the console's token page (`/console/tokens/`)."
            ),
        }
