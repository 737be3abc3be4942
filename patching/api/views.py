"""The patch catalog (read by everyone, imported into by admins and the scanner) and an asset's
patch state (per site: an asset outside the caller's sites answers 404)."""

import django_filters
from django.db.models import Prefetch
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from patching import selectors, services
from patching.models import AssetPatch, AssetPatchStatus, CatalogSource, PatchCatalog, PatchCve, Severity
from rmm.access import roles as access
from rmm.core.api import SiteScopedMixin
from rmm.core.api_schema import refusal
from rmm.inventory.models import Asset

SEVERITY_NAMES = [member.label for member in Severity]


class SeverityField(serializers.ChoiceField):
    """The catalog's ordered severity by name (stored as the seed's integer, 0 to 4)."""

    def __init__(self, **kwargs):
        super().__init__(choices=SEVERITY_NAMES, **kwargs)

    def to_representation(self, value):
        return Severity(value).label


class PatchSerializer(serializers.ModelSerializer):
    """A catalog entry as an asset's patch row shows it."""

    severity = SeverityField(read_only=True)

    class Meta:
        model = PatchCatalog
        fields = ["id", "vendor", "product", "patch_id", "severity", "release_date"]
        read_only_fields = fields


class PatchCatalogSerializer(PatchSerializer):
    cves = serializers.SlugRelatedField(slug_field="cve", many=True, read_only=True, help_text="The CVEs it fixes.")
    url = serializers.CharField(read_only=True, help_text="The advisory's address; empty for what a scan reported.")

    class Meta(PatchSerializer.Meta):
        fields = [
            *PatchSerializer.Meta.fields,
            "fixed_version",
            "cves",
            "title",
            "url",
            "source",
            "source_advisory_id",
            "imported_at",
        ]
        read_only_fields = fields


class ImportResultSerializer(serializers.Serializer):
    source = serializers.ChoiceField(choices=CatalogSource.choices)
    imported = serializers.IntegerField(help_text="Catalog entries in the document: created + updated + unchanged.")
    created = serializers.IntegerField()
    updated = serializers.IntegerField()
    unchanged = serializers.IntegerField()


class PatchCatalogFilter(django_filters.FilterSet):
    cve = django_filters.CharFilter(method="filter_cve", help_text="Entries that fix this CVE, e.g. CVE-2024-0727.")
    vendor = django_filters.CharFilter(field_name="vendor", lookup_expr="iexact")
    product = django_filters.CharFilter(field_name="product", lookup_expr="iexact")
    min_severity = django_filters.ChoiceFilter(
        choices=[(name, name) for name in SEVERITY_NAMES],
        method="filter_min_severity",
        help_text="Entries of this severity or higher.",
    )
    source = django_filters.ChoiceFilter(choices=CatalogSource.choices)

    class Meta:
        model = PatchCatalog
        fields = ["cve", "vendor", "product", "patch_id", "min_severity", "source"]

    def filter_cve(self, queryset, name, value):
        return queryset.filter(pk__in=PatchCve.objects.filter(cve=value.strip().upper()).values("patch_id"))

    def filter_min_severity(self, queryset, name, value):
        return queryset.filter(severity__gte=Severity.named(value))


class PatchCatalogViewSet(viewsets.ReadOnlyModelViewSet):
    """The patch catalog: fixes by vendor, product and patch id, with the CVEs each fixes
    (docs/patching.md). It fills from imported advisories."""

    serializer_class = PatchCatalogSerializer
    filterset_class = PatchCatalogFilter
    queryset = PatchCatalog.objects.prefetch_related(Prefetch("cves", queryset=PatchCve.objects.order_by("cve")))

    @extend_schema(
        request=OpenApiTypes.OBJECT,
        responses={
            201: ImportResultSerializer,
            400: refusal("Not a valid CSAF 2.0 document: each problem under its JSON path."),
            403: refusal("Only admins and the scanner may import advisories."),
            409: refusal("Another import wrote the same entries at the same time: import again."),
        },
    )
    @action(detail=False, methods=["post"], url_path="import")
    def import_csaf(self, request):
        """Import a CSAF 2.0 advisory (the body is the document): its fixed products become catalog
        entries, or update those that exist (201 with the counts)."""
        result = services.import_csaf(request.user, request.data)
        return Response(ImportResultSerializer(result).data, status=status.HTTP_201_CREATED)


class AssetPatchSerializer(serializers.ModelSerializer):
    patch = PatchSerializer(read_only=True)

    class Meta:
        model = AssetPatch
        fields = ["id", "patch", "status", "detected_at", "installed_at"]
        read_only_fields = fields


class AssetPatchFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=AssetPatchStatus.choices)
    product = django_filters.CharFilter(field_name="patch__product", lookup_expr="iexact")
    min_severity = django_filters.ChoiceFilter(
        choices=[(name, name) for name in SEVERITY_NAMES], method="filter_min_severity"
    )

    class Meta:
        model = AssetPatch
        fields = ["status", "product", "min_severity"]

    def filter_min_severity(self, queryset, name, value):
        return queryset.filter(patch__severity__gte=Severity.named(value))


@extend_schema(
    parameters=[
        OpenApiParameter("status", enum=AssetPatchStatus.values),
        OpenApiParameter("product", description="The package (the catalog entry's product), any case."),
        OpenApiParameter("min_severity", enum=SEVERITY_NAMES, description="Patches of this severity or higher."),
    ]
)
class AssetPatchesView(SiteScopedMixin, generics.ListAPIView):
    """An asset's patches and their state (actual state, written by scans); an asset outside your
    sites answers 404, as if it did not exist."""

    serializer_class = AssetPatchSerializer
    lookup_url_kwarg = "asset_id"
    filter_backends = []  # the asset is looked up unfiltered; its patches through AssetPatchFilter

    def get_queryset(self):
        """The assets the caller may see (SiteScopedMixin looks the asset up among them)."""
        return Asset.objects.filter(site__in=access.visible_sites(self.request.user))

    def list(self, request, *args, **kwargs):
        asset = self.get_object()
        patches = AssetPatchFilter(
            request.query_params,
            queryset=AssetPatch.objects.filter(asset=asset)
            .select_related("patch")
            .order_by("-patch__severity", "patch__vendor", "patch__product", "patch__patch_id"),
        )
        if not patches.is_valid():
            raise ValidationError(patches.errors)
        page = self.paginate_queryset(patches.qs)
        return self.get_paginated_response(self.get_serializer(page, many=True).data)


class PatchComplianceRowSerializer(serializers.Serializer):
    site = serializers.CharField()
    severity = serializers.ChoiceField(choices=SEVERITY_NAMES, help_text="Patches of this severity or higher.")
    assets = serializers.IntegerField(help_text="The site's active assets.")
    scanned = serializers.IntegerField(help_text="Of them, those a scan has reported.")
    fully_patched = serializers.IntegerField(help_text="Scanned, and missing no patch of this severity or higher.")
    missing = serializers.IntegerField(help_text="Scanned, and missing (or failing, or installing) at least one.")


class PatchComplianceQuery(serializers.Serializer):
    site = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    severity = serializers.ChoiceField(choices=SEVERITY_NAMES, required=False)


@extend_schema(
    parameters=[
        OpenApiParameter("site", description="One site's rows, by name."),
        OpenApiParameter("severity", enum=SEVERITY_NAMES, description="One severity's rows (that or higher)."),
    ]
)
class PatchComplianceView(generics.ListAPIView):
    """Fleet patch compliance: per site you may see and per severity, how many scanned assets are
    fully patched and how many miss a patch of that severity or higher (docs/patching.md)."""

    serializer_class = PatchComplianceRowSerializer
    filter_backends = []  # the rows are computed, not a queryset: site and severity are read below

    def get_queryset(self):
        query = PatchComplianceQuery(data=self.request.query_params)
        query.is_valid(raise_exception=True)  # 400 naming the parameter (a NUL PostgreSQL cannot compare)
        severity = query.validated_data.get("severity")
        return selectors.compliance(
            self.request.user,
            site_name=query.validated_data.get("site"),
            severity=None if severity is None else Severity.named(severity),
        )
