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


def _read_or_upsert(request, pk, serializer_cls, visible, upsert):
    """GET answers what the caller may see; PUT validates, upserts through the service, 201 when new."""
    if request.method == "GET":
        record = visible.filter(pk=pk).first()
        if record is None:
            return Response({"detail": "Not found."}, status=404)
        return Response(serializer_cls(record).data)
    ser = serializer_cls(data=request.data)
    ser.is_valid(raise_exception=True)
    existed = serializer_cls.Meta.model.objects.filter(pk=pk).exists()
    record = upsert(ser.validated_data)
    return Response(serializer_cls(record).data, status=status.HTTP_200_OK if existed else status.HTTP_201_CREATED)


@extend_schema(**upsert_schema(PsaCaseSerializer), methods=["PUT"])
@extend_schema(responses=PsaCaseSerializer, methods=["GET"])
@api_view(["GET", "PUT"])
def psa_case(request, case_id):
    """Upsert (PUT) or read (GET) the mirror of a PSA case, by the PSA's own UUID."""
    return _read_or_upsert(
        request,
        case_id,
        PsaCaseSerializer,
        _visible_cases(request.user),
        lambda data: services.upsert_case(
            request.user,
            case_id,
            title=data["title"],
            status=data["status"],
            site_name=data["site"]["name"],
            expires_at=data.get("expires_at"),
        ),
    )


@extend_schema(**upsert_schema(PsaTaskSerializer), methods=["PUT"])
@extend_schema(responses=PsaTaskSerializer, methods=["GET"])
@api_view(["GET", "PUT"])
def psa_task(request, task_id):
    """Upsert (PUT) or read (GET) the mirror of a PSA task, by the PSA's own UUID."""
    return _read_or_upsert(
        request,
        task_id,
        PsaTaskSerializer,
        PsaTask.objects.filter(case__in=_visible_cases(request.user)),
        lambda data: services.upsert_task(
            request.user,
            task_id,
            case_id=data["case_id"],
            title=data["title"],
            status=data["status"],
            expires_at=data.get("expires_at"),
        ),
    )
