"""API tokens over the API: list the caller's own, revoke one."""

import uuid

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from rmm.access import services
from rmm.access.models import ApiToken
from rmm.core.api import reason_of
from rmm.core.api_schema import refusal


class ApiTokenSerializer(serializers.ModelSerializer):
    """A token as its holder and admins see it; never the secret (only its hash is kept)."""

    user = serializers.CharField(source="user.username", read_only=True)
    prefix = serializers.CharField(read_only=True, help_text="The part after `rmm_`: names the token.")
    privileged = serializers.BooleanField(
        read_only=True, help_text="Its user could approve or administer when it was issued; it expires."
    )
    last_used_at = serializers.DateTimeField(
        read_only=True, allow_null=True, help_text="Its last use, to the minute; null if never used."
    )

    class Meta:
        model = ApiToken
        fields = [
            "id",
            "user",
            "name",
            "prefix",
            "privileged",
            "created_at",
            "expires_at",
            "last_used_at",
            "revoked_at",
            "revoked_by",
            "issued_by",
        ]
        read_only_fields = fields


class RevokeTokenSerializer(serializers.Serializer):
    """The body of a revocation: an optional reason, kept in the history."""

    reason = serializers.CharField(required=False, allow_blank=True, help_text="Why (optional).")


class ApiTokenViewSet(viewsets.ReadOnlyModelViewSet):
    """API tokens: the caller's own (every token for an admin over every site); revoke one.

    Tokens are issued on the server (`manage.py rmm_token`) or on the console's token page, never
    through the API.
    """

    serializer_class = ApiTokenSerializer

    def get_queryset(self):
        return services.visible_tokens(self.request.user)

    @extend_schema(
        request=RevokeTokenSerializer,
        responses={200: ApiTokenSerializer, 409: refusal("This token is revoked already.")},
    )
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        """Revoke the token: its next call answers 401. A token may revoke itself."""
        reason = reason_of(request)
        try:
            token_id = uuid.UUID(str(pk))
        except ValueError:
            return Response({"detail": "Not found."}, status=404)
        token = services.revoke_token(request.user, token_id, reason)
        return Response(self.get_serializer(token).data)
