"""The scanner's findings through the API (docs/patching.md#the-scanners-round-trip): ``POST
/api/v1/vulnerability-findings/``, the list to poll (``?status=awaiting_verification``) and
``POST …/{id}/verify/``. Per site: a finding or an asset outside your sites answers 404."""

import django_filters
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from patching import findings as services
from patching.api.views import SEVERITY_NAMES, SeverityField
from patching.models import FindingSource, FindingStatus, Severity, VulnerabilityFinding
from rmm.core.api import SiteScopedMixin
from rmm.core.api_schema import refusal


class FindingSerializer(serializers.ModelSerializer):
    asset = serializers.UUIDField(source="asset_id")
    hostname = serializers.CharField(source="asset.hostname")
    site = serializers.CharField(source="site.name")
    severity = SeverityField()
    psa_task_id = serializers.UUIDField()
    psa_case_id = serializers.UUIDField()
    catalog_entry = serializers.UUIDField(source="catalog_entry_id", allow_null=True)
    patch_job = serializers.UUIDField(source="fixed_by_id", allow_null=True, help_text="The patch job that fixed it.")
    verified_by = serializers.CharField(source="verified_by.username", allow_null=True)

    class Meta:
        model = VulnerabilityFinding
        fields = [
            "id",
            "asset",
            "hostname",
            "site",
            "cve",
            "product",
            "fixed_version",
            "patch_id",
            "severity",
            "scanner_ref",
            "source",
            "status",
            "psa_task_id",
            "psa_case_id",
            "catalog_entry",
            "patch_job",
            "installed_version",
            "created_at",
            "fix_detected_at",
            "verified_by",
            "verified_at",
            "verification_details",
        ]
        read_only_fields = fields


class FindingRequestSerializer(serializers.Serializer):
    # Text, checked by the service (which names the field): a CVE id's format is its rule.
    asset = serializers.UUIDField()
    cve = serializers.CharField(help_text="CVE-YYYY-NNNN…")
    product = serializers.CharField(help_text="The package (or product) the scanner found vulnerable.")
    fixed_version = serializers.CharField(required=False, allow_blank=True, help_text="Or patch_id: one is needed.")
    patch_id = serializers.CharField(required=False, allow_blank=True, help_text="The update's id (a KB, an advisory).")
    severity = serializers.CharField(help_text=f"One of: {', '.join(SEVERITY_NAMES)}.")
    scanner_ref = serializers.CharField(help_text="The scanner's own id of the finding.")
    source = serializers.CharField(required=False, default=FindingSource.SCANNER, help_text="scanner or pentest.")
    psa_task_id = serializers.UUIDField(required=False, allow_null=True, help_text="The remediation task.")


class VerificationSerializer(serializers.Serializer):
    verified = serializers.BooleanField(help_text="Whether the scan (or the retest) finds the vulnerability gone.")
    details = serializers.CharField(required=False, allow_blank=True, default="", max_length=services.MAX_DETAILS)


class FindingFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=FindingStatus.choices)
    source = django_filters.ChoiceFilter(choices=FindingSource.choices)
    asset = django_filters.UUIDFilter(field_name="asset_id")
    cve = django_filters.CharFilter(field_name="cve", lookup_expr="iexact")
    psa_case_id = django_filters.UUIDFilter(field_name="psa_case_id")
    min_severity = django_filters.ChoiceFilter(
        choices=[(name, name) for name in SEVERITY_NAMES], method="filter_min_severity"
    )

    class Meta:
        model = VulnerabilityFinding
        fields = ["status", "source", "asset", "cve", "psa_case_id", "min_severity"]

    def filter_min_severity(self, queryset, name, value):
        return queryset.filter(severity__gte=Severity.named(value))


class FindingViewSet(SiteScopedMixin, viewsets.ReadOnlyModelViewSet):
    """Vulnerability findings of the sites you may see; a scanner (or pen tester) reports them and
    verifies their fix once a patch job's re-scan shows it (docs/patching.md)."""

    serializer_class = FindingSerializer
    filterset_class = FindingFilter

    def get_queryset(self):
        return (
            services.visible(self.request.user)
            .select_related("asset", "site", "verified_by")
            .order_by("-created_at", "id")
        )

    @extend_schema(
        request=FindingRequestSerializer,
        responses={
            201: FindingSerializer,
            400: refusal("A field is missing or malformed (a CVE id), or the PSA task does not cover the asset."),
            403: refusal("Only admins and the scanner report findings."),
            404: refusal("No such asset among your sites."),
        },
    )
    def create(self, request):
        """Report a finding on an asset, on the PSA remediation task that authorises its fix."""
        given = FindingRequestSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        made = services.create(
            request.user,
            asset_id=data["asset"],
            cve=data["cve"],
            product=data["product"],
            fixed_version=data.get("fixed_version", ""),
            patch_id=data.get("patch_id", ""),
            severity=data["severity"],
            scanner_ref=data["scanner_ref"],
            source=data["source"],
            psa_task_id=data.get("psa_task_id"),
        )
        return Response(FindingSerializer(self.get_queryset().get(pk=made.pk)).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=VerificationSerializer,
        responses={
            200: FindingSerializer,
            403: refusal("Only admins and the scanner verify findings."),
            409: refusal("The finding awaits no verification."),
        },
    )
    @action(detail=True, methods=["post"])
    def verify(self, request, pk=None):
        """The scanner's verification (or the tester's retest): verified, or the finding reopens."""
        finding = self.get_object()
        given = VerificationSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        services.verify(
            request.user, finding, verified=given.validated_data["verified"], details=given.validated_data["details"]
        )
        return Response(FindingSerializer(self.get_queryset().get(pk=pk)).data)
