from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, viewsets
from rest_framework.decorators import action

from evidence import services
from evidence.models import RmmEvidence
from rmm import access
from rmm.api import SiteScopedMixin


class EvidenceSerializer(serializers.ModelSerializer):
    asset_id = serializers.UUIDField(read_only=True)

    class Meta:
        model = RmmEvidence
        fields = [
            "id",
            "asset_id",
            "evidence_type",
            "related_entity",
            "related_id",
            "storage_uri",
            "hash",
            "captured_at",
        ]


class EvidenceViewSet(SiteScopedMixin, viewsets.ReadOnlyModelViewSet):
    """Evidence records (seed G) of the sites you may see; ``content`` serves the blob."""

    serializer_class = EvidenceSerializer
    filterset_fields = ["evidence_type", "related_entity", "related_id", "asset"]

    def get_queryset(self):
        if not access.can(self.request.user, "view_evidence"):
            return RmmEvidence.objects.none()
        return RmmEvidence.objects.filter(asset__site__in=access.visible_sites(self.request.user))

    @extend_schema(responses={(200, "application/json"): OpenApiTypes.BINARY})
    @action(detail=True, methods=["get"])
    def content(self, request, pk=None):
        row = self.get_object()
        response = HttpResponse(services.read_blob(row), content_type="application/json")
        response["X-Content-SHA256"] = row.hash
        return response
