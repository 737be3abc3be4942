import uuid

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action, api_view
from rest_framework.response import Response

from rmm import access
from rmm.api import reason_of
from rmm.api_schema import refusal
from rmm.authority import services
from rmm.authority.models import ApiToken, AuthorityStatus, PsaCase, PsaTask


class PsaCaseSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(read_only=True)
    site = serializers.CharField(source="site.name")
    status = serializers.ChoiceField(choices=AuthorityStatus.choices)

    class Meta:
        model = PsaCase
        fields = ["id", "title", "status", "site", "expires_at", "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]


class PsaTaskSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(read_only=True)
    case = serializers.UUIDField(source="case_id")
    status = serializers.ChoiceField(choices=AuthorityStatus.choices)

    class Meta:
        model = PsaTask
        fields = ["id", "case", "title", "status", "expires_at", "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]


def upsert_schema(serializer) -> dict:
    """A PUT upsert answers 201 when the id was new and 200 when it updated the record."""
    return {
        "request": serializer,
        "responses": {
            200: OpenApiResponse(serializer, description="Updated."),
            201: OpenApiResponse(serializer, description="Created."),
        },
    }


def _visible_cases(user):
    return PsaCase.objects.filter(site__in=access.visible_sites(user)).select_related("site")


@extend_schema(**upsert_schema(PsaCaseSerializer), methods=["PUT"])
@extend_schema(responses=PsaCaseSerializer, methods=["GET"])
@api_view(["GET", "PUT"])
def psa_case(request, case_id):
    """Upsert (PUT) or read (GET) the mirror of a PSA case, by the PSA's own UUID."""
    if request.method == "GET":
        case = _visible_cases(request.user).filter(pk=case_id).first()
        if case is None:
            return Response({"detail": "Not found."}, status=404)
        return Response(PsaCaseSerializer(case).data)
    ser = PsaCaseSerializer(data=request.data)
    ser.is_valid(raise_exception=True)
    existed = PsaCase.objects.filter(pk=case_id).exists()
    case = services.upsert_case(
        request.user,
        case_id,
        title=ser.validated_data["title"],
        status=ser.validated_data["status"],
        site_name=ser.validated_data["site"]["name"],
        expires_at=ser.validated_data.get("expires_at"),
    )
    return Response(PsaCaseSerializer(case).data, status=status.HTTP_200_OK if existed else status.HTTP_201_CREATED)


@extend_schema(**upsert_schema(PsaTaskSerializer), methods=["PUT"])
@extend_schema(responses=PsaTaskSerializer, methods=["GET"])
@api_view(["GET", "PUT"])
def psa_task(request, task_id):
    """Upsert (PUT) or read (GET) the mirror of a PSA task, by the PSA's own UUID."""
    if request.method == "GET":
        task = PsaTask.objects.filter(pk=task_id, case__in=_visible_cases(request.user)).first()
        if task is None:
            return Response({"detail": "Not found."}, status=404)
        return Response(PsaTaskSerializer(task).data)
    ser = PsaTaskSerializer(data=request.data)
    ser.is_valid(raise_exception=True)
    existed = PsaTask.objects.filter(pk=task_id).exists()
    task = services.upsert_task(
        request.user,
        task_id,
        case_id=ser.validated_data["case_id"],
        title=ser.validated_data["title"],
        status=ser.validated_data["status"],
        expires_at=ser.validated_data.get("expires_at"),
    )
    return Response(PsaTaskSerializer(task).data, status=status.HTTP_200_OK if existed else status.HTTP_201_CREATED)


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
