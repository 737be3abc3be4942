import django_filters
from django.conf import settings
from django.http import FileResponse, Http404, HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action, api_view
from rest_framework.generics import ListAPIView
from rest_framework.response import Response

from evidence import exports, services, types
from evidence.models import EvidenceExport, LegalHold, RmmEvidence
from rmm.access import roles as access
from rmm.authority.models import PsaCase
from rmm.core.api import SiteScopedMixin
from rmm.core.api_schema import refusal
from rmm.history import services as history
from rmm.keys import keyset

UUID_REGEX = r"[0-9a-fA-F-]{32,36}"


class EvidenceSerializer(serializers.ModelSerializer):
    asset_id = serializers.UUIDField(read_only=True, allow_null=True)
    site = serializers.CharField(source="site.name", read_only=True, allow_null=True)
    psa_case_id = serializers.UUIDField(read_only=True, allow_null=True)
    psa_task_id = serializers.UUIDField(read_only=True, allow_null=True)

    class Meta:
        model = RmmEvidence
        fields = [
            "id",
            "asset_id",
            "site",
            "evidence_type",
            "related_entity",
            "related_id",
            "psa_case_id",
            "psa_task_id",
            "storage_uri",
            "hash",
            "captured_at",
            "history_sequence",
        ]


class EvidenceFilter(django_filters.FilterSet):
    # Plain UUIDs, not model choices: a choice filter would answer 400 for an id that does not
    # exist and 200 for one in another site, telling the caller what exists elsewhere.
    asset = django_filters.UUIDFilter(field_name="asset_id")
    psa_case = django_filters.UUIDFilter(field_name="psa_case_id")
    psa_task = django_filters.UUIDFilter(field_name="psa_task_id")
    evidence_type = django_filters.ChoiceFilter(choices=types.LiveChoices())

    class Meta:
        model = RmmEvidence
        fields = ["evidence_type", "related_entity", "related_id", "asset", "psa_case", "psa_task"]


CONTENT_SHA256 = OpenApiParameter(
    "X-Content-SHA256",
    str,
    OpenApiParameter.HEADER,
    response=[200],
    required=True,
    description="The sha256 of the body, as recorded.",
)
STORE_ALTERED = refusal("The stored bytes are missing or no longer match their recorded hash.")


class EvidenceViewSet(SiteScopedMixin, viewsets.ReadOnlyModelViewSet):
    """Evidence records (seed G) of the sites you may see; ``content`` serves the blob, rechecked."""

    serializer_class = EvidenceSerializer
    filterset_class = EvidenceFilter
    lookup_value_regex = UUID_REGEX  # leaves evidence/exports/ and evidence/legal-holds/ to their views

    def get_queryset(self):
        return services.visible_evidence(self.request.user).select_related("site").order_by("-captured_at", "id")

    @extend_schema(
        responses={
            (200, "application/json"): OpenApiResponse(
                OpenApiTypes.OBJECT, description="The evidence document, byte for byte as stored and hashed."
            ),
            (200, "application/octet-stream"): OpenApiResponse(
                OpenApiTypes.BINARY, description="A blob that is not a JSON document, as stored and hashed."
            ),
            409: STORE_ALTERED,
        },
        parameters=[CONTENT_SHA256],
    )
    @action(detail=True, methods=["get"])
    def content(self, request, pk=None):
        row = self.get_object()
        media = "application/json" if services.blob_extension(row) == "json" else "application/octet-stream"
        response = HttpResponse(services.read_blob(row), content_type=media)
        response["X-Content-SHA256"] = row.hash
        return response


class CaseEvidenceView(ListAPIView):
    """The evidence gathered under one PSA case, for the PSA to attach when it closes the case."""

    serializer_class = EvidenceSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return RmmEvidence.objects.none()
        case_id = self.kwargs["case_id"]
        if not PsaCase.objects.filter(pk=case_id, site__in=access.visible_sites(self.request.user)).exists():
            if PsaCase.objects.filter(pk=case_id).exists():
                history.record_refusal(
                    self.request.user,
                    "access",
                    reason="object outside the caller's sites",
                    payload={"object": f"authority.psacase:{case_id}", "path": self.request.path},
                )
            raise Http404
        return (
            services.visible_evidence(self.request.user)
            .filter(psa_case_id=case_id)
            .select_related("site")
            .order_by("captured_at", "id")
        )


class ExportFiltersSerializer(serializers.Serializer):
    site = serializers.CharField(required=False, allow_blank=True, help_text="A site's name or id")
    assets = serializers.ListField(child=serializers.CharField(), required=False, help_text="Asset ids or hostnames")
    psa_case = serializers.UUIDField(required=False, allow_null=True)
    evidence_types = serializers.ListField(
        child=serializers.ChoiceField(choices=types.LiveChoices(exportable_only=True)), required=False
    )
    since = serializers.DateTimeField(required=False, allow_null=True)
    until = serializers.DateTimeField(required=False, allow_null=True, help_text="Exclusive")


class EvidenceExportSerializer(serializers.ModelSerializer):
    requested_by = serializers.CharField(source="requested_by.get_username", read_only=True)
    download = serializers.SerializerMethodField()

    class Meta:
        model = EvidenceExport
        fields = [
            "id",
            "status",
            "progress",
            "item_count",
            "filters",
            "requested_by",
            "requested_at",
            "started_at",
            "finished_at",
            "file_hash",
            "file_size",
            "anchor_sequence",
            "error",
            "attempts",
            "download",
        ]

    @extend_schema_field(serializers.CharField(allow_null=True, help_text="The bundle's path, once done."))
    def get_download(self, obj):
        return f"/api/v1/evidence/exports/{obj.pk}/download/" if obj.status == "done" else None


class EvidenceExportViewSet(
    mixins.CreateModelMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Compliance exports: request one (202), watch its status and progress, download the ZIP."""

    serializer_class = EvidenceExportSerializer

    def get_queryset(self):
        return exports.visible_exports(self.request.user)

    @extend_schema(
        request=ExportFiltersSerializer,
        responses={202: EvidenceExportSerializer},
        parameters=[
            OpenApiParameter(
                "Location",
                str,
                OpenApiParameter.HEADER,
                response=[202],
                required=True,
                description="Where to watch the export.",
            )
        ],
    )
    def create(self, request, *args, **kwargs):
        ser = ExportFiltersSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        data = ser.validated_data
        export = exports.request_export(
            request.user,
            site=data.get("site") or None,
            assets=data.get("assets") or None,
            psa_case=data.get("psa_case"),
            evidence_types=data.get("evidence_types") or None,
            since=data.get("since"),
            until=data.get("until"),
        )
        response = Response(EvidenceExportSerializer(export).data, status=status.HTTP_202_ACCEPTED)
        response["Location"] = f"/api/v1/evidence/exports/{export.pk}/"
        return response

    @extend_schema(
        responses={
            (200, "application/zip"): OpenApiTypes.BINARY,
            403: refusal("The caller no longer holds the export role, or may no longer see every site it covers."),
            409: refusal("The export is not done, or its bundle is missing or altered."),
        },
        parameters=[CONTENT_SHA256],
    )
    @action(detail=True, methods=["get"])
    def download(self, request, pk=None):
        export = self.get_object()
        bundle = exports.open_bundle(request.user, export)
        filename = f"rmm-evidence-{export.pk}.zip"
        if settings.RMM_EVIDENCE_ACCEL_REDIRECT:  # checked and recorded above; the proxy sends the bytes
            bundle.close()
            response = HttpResponse(content_type="application/zip")
            response["X-Accel-Redirect"] = settings.RMM_EVIDENCE_ACCEL_REDIRECT.rstrip("/") + "/" + export.file_name
            response["Content-Disposition"] = f'attachment; filename="{filename}"'
        else:
            response = FileResponse(bundle, as_attachment=True, filename=filename, content_type="application/zip")
        response["X-Content-SHA256"] = export.file_hash
        return response


class LegalHoldSerializer(serializers.ModelSerializer):
    site = serializers.CharField(source="site.name", read_only=True, allow_null=True)
    psa_case = serializers.UUIDField(source="psa_case_id", read_only=True, allow_null=True)
    placed_by = serializers.CharField(source="placed_by.get_username", read_only=True)
    released_by = serializers.CharField(source="released_by.get_username", read_only=True, allow_null=True)
    active = serializers.SerializerMethodField()

    class Meta:
        model = LegalHold
        fields = [
            "id",
            "site",
            "psa_case",
            "reason",
            "placed_by",
            "placed_at",
            "active",
            "released_by",
            "released_at",
            "release_reason",
        ]

    def get_active(self, obj) -> bool:
        return obj.released_at is None


class PlaceHoldSerializer(serializers.Serializer):
    site = serializers.CharField(required=False, allow_blank=True, help_text="A site's name or id")
    psa_case = serializers.UUIDField(required=False, allow_null=True)
    reason = serializers.CharField()


class ReleaseHoldSerializer(serializers.Serializer):
    reason = serializers.CharField()


class LegalHoldViewSet(
    SiteScopedMixin, mixins.CreateModelMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Legal holds: while one is active, retention deletes nothing of its site or PSA case."""

    serializer_class = LegalHoldSerializer
    lookup_value_regex = UUID_REGEX

    def get_queryset(self):
        return services.visible_holds(self.request.user)

    @extend_schema(request=PlaceHoldSerializer, responses={201: LegalHoldSerializer})
    def create(self, request, *args, **kwargs):
        ser = PlaceHoldSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        hold = services.place_hold(
            request.user,
            site_ref=ser.validated_data.get("site") or None,
            psa_case_id=ser.validated_data.get("psa_case"),
            reason=ser.validated_data["reason"],
        )
        return Response(LegalHoldSerializer(hold).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=ReleaseHoldSerializer,
        responses={200: LegalHoldSerializer, 409: refusal("This legal hold is already released.")},
    )
    @action(detail=True, methods=["post"])
    def release(self, request, pk=None):
        hold = self.get_object()
        ser = ReleaseHoldSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        hold = services.release_hold(request.user, hold, ser.validated_data["reason"])
        return Response(LegalHoldSerializer(hold).data)


@extend_schema(
    responses=inline_serializer(
        "SigningKey",
        {
            "algorithm": serializers.CharField(),
            "key_id": serializers.CharField(),
            "public_key": serializers.CharField(),
            "fingerprint": serializers.CharField(),
            "keys": inline_serializer(
                "EvidenceKey",
                {
                    "key_id": serializers.CharField(),
                    "public_key": serializers.CharField(),
                    "fingerprint": serializers.CharField(),
                    "created_at": serializers.DateTimeField(),
                    "retired_at": serializers.DateTimeField(allow_null=True),
                },
                many=True,
            ),
        },
    )
)
@api_view(["GET"])
def signing_key(request):
    """The server's evidence key that signs history anchors and evidence bundles now, and every
    evidence key that signed them before (a rotation keeps them verifiable).

    An auditor compares its fingerprint with the one printed by a bundle's verify.py.
    """
    keys = keyset.current()
    signer = keys.signer(keyset.EVIDENCE)
    return Response(
        {
            "algorithm": "Ed25519",
            "key_id": signer.key_id,
            "public_key": signer.public_key_b64,
            "fingerprint": signer.fingerprint,
            "keys": [
                {
                    "key_id": key.key_id,
                    "public_key": key.public_key_b64,
                    "fingerprint": key.fingerprint,
                    "created_at": key.created_at,
                    "retired_at": key.retired_at,
                }
                for key in keys.keys(keyset.EVIDENCE)
            ],
        }
    )
