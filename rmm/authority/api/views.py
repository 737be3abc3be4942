from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import api_view
from rest_framework.response import Response

from rmm.access import roles as access
from rmm.authority import services
from rmm.authority.models import AuthorityStatus, PsaCase, PsaTask


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
