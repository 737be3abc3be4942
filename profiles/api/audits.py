"""Audits through the API: request one for an assignment, an asset's compliance (desired and
actual side by side), drift events and audit jobs; every answer restricted to the caller's sites."""

import django_filters
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.utils import OpenApiParameter, PolymorphicProxySerializer, extend_schema, inline_serializer
from rest_framework import generics, serializers, status, viewsets
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response
from rest_framework.views import APIView

from profiles import audits, compliance
from profiles.models import (
    ConfigurationAuditJob,
    ConfigurationDriftEvent,
    ConfigurationItem,
    ConfigurationObservation,
    ObservationState,
)
from rmm.access import roles as access
from rmm.core.api import SiteScopedMixin
from rmm.core.api_schema import refusal
from rmm.core.errors import NotFound
from rmm.engine.api.views import StatusField
from rmm.history import services as history
from rmm.inventory.models import Asset

AuditAnswer = inline_serializer(
    "AuditAnswer",
    {
        "jobs": serializers.ListField(child=serializers.UUIDField(), help_text="The audit jobs, one per asset."),
        "batch": serializers.UUIDField(allow_null=True, help_text="Their batch (a site's assignment), or null."),
    },
)


class AuditView(APIView):
    """Audits of an assignment (no serializer of its own: OPTIONS describes no body)."""

    @extend_schema(
        request=None,
        responses={
            202: AuditAnswer,
            400: refusal("No authority (psa_task_id), a profile that cannot be audited, or a site without assets."),
            409: refusal("The assignment is stopped or rejected, or an asset is retired."),
        },
        operation_id="profile_assignments_audit_create",
        tags=["profile-assignments"],
    )
    def post(self, request, pk):
        """Audit an assignment now: one job on its asset, or one per active asset of its site (a batch)."""
        jobs = audits.request_audit(request.user, pk)
        return Response(
            {"jobs": [str(job.pk) for job in jobs], "batch": str(jobs[0].batch_id) if jobs[0].batch_id else None},
            status=status.HTTP_202_ACCEPTED,
        )


class ComplianceRowSerializer(serializers.Serializer):
    profile = serializers.UUIDField(source="revision.profile_id")
    profile_name = serializers.CharField(source="revision.profile.name")
    profile_revision = serializers.IntegerField(source="revision.revision")
    item = serializers.UUIDField(source="pk")
    config_key = serializers.CharField(source="config_key.name")
    parameters = serializers.DictField(child=serializers.CharField())
    comparison = serializers.CharField()
    desired_value = serializers.CharField()
    enforcement_mode = serializers.CharField()
    observed_value = serializers.SerializerMethodField()
    compliant = serializers.SerializerMethodField()
    state = serializers.SerializerMethodField(help_text="compliant, non_compliant, error, or null: never audited.")
    observed_at = serializers.SerializerMethodField()
    evidence = serializers.SerializerMethodField(help_text="The audit's evidence record.")

    def _observation(self, item) -> ConfigurationObservation | None:
        return self.context["observations"].get(item.pk)

    def get_observed_value(self, item) -> str | None:
        found = self._observation(item)
        return found.observed_value if found else None

    def get_compliant(self, item) -> bool | None:
        found = self._observation(item)
        return found.compliant if found else None

    def get_state(self, item) -> str | None:
        found = self._observation(item)
        return found.state if found else None

    def get_observed_at(self, item) -> str | None:
        found = self._observation(item)
        return found.observed_at.isoformat() if found else None

    def get_evidence(self, item) -> str | None:
        found = self._observation(item)
        return str(found.evidence_id) if found and found.evidence_id else None


class ComplianceView(GenericAPIView):
    """An asset's compliance: one row per item of each profile assigned to it (directly or through
    its site) at the profile's current revision, with the newest observation of it."""

    serializer_class = ComplianceRowSerializer
    queryset = ConfigurationItem.objects.none()  # for the schema; rows are read in get()

    @extend_schema(
        parameters=[OpenApiParameter("profile", str, description="Only this profile's items (its id).")],
        responses={200: ComplianceRowSerializer(many=True)},
    )
    def get(self, request, pk):
        asset = Asset.objects.filter(pk=pk, site__in=access.visible_sites(request.user)).first()
        if asset is None:
            if Asset.objects.filter(pk=pk).exists():
                history.record_refusal(
                    request.user,
                    "access",
                    reason="object outside the caller's sites",
                    payload={"object": f"inventory.asset:{pk}", "path": request.path},
                )
            raise NotFound("No such asset.")
        assigned = audits.assigned_to(asset).filter(status__in=audits.AUDITABLE)
        profile = request.query_params.get("profile")
        if profile:
            try:
                assigned = assigned.filter(profile_id=serializers.UUIDField().to_internal_value(profile))
            except serializers.ValidationError:
                raise serializers.ValidationError({"profile": ["Must be a valid UUID."]}) from None
        items = (
            ConfigurationItem.objects.filter(revision_id__in=assigned.values("profile__current_revision"))
            .select_related("revision__profile", "config_key")
            .order_by("revision__profile__name", "position")
        )
        page = self.paginate_queryset(items)
        observations = {
            row.item_id: row
            for row in ConfigurationObservation.objects.filter(asset=asset, item__in=[item.pk for item in page])
        }
        rows = ComplianceRowSerializer(page, many=True, context={"observations": observations})
        return self.get_paginated_response(rows.data)


class ObservationSerializer(serializers.ModelSerializer):
    hostname = serializers.CharField(source="asset.hostname")
    profile = serializers.UUIDField(source="profile_revision.profile_id")
    profile_name = serializers.CharField(source="profile_revision.profile.name")
    profile_revision = serializers.IntegerField(source="profile_revision.revision")
    config_key = serializers.CharField(source="item.config_key.name")
    parameters = serializers.DictField(source="item.parameters", child=serializers.CharField())
    comparison = serializers.CharField(source="item.comparison")
    desired_value = serializers.CharField(source="item.desired_value")
    enforcement_mode = serializers.CharField(source="item.enforcement_mode")

    class Meta:
        model = ConfigurationObservation
        fields = [
            "id",
            "asset",
            "hostname",
            "profile",
            "profile_name",
            "profile_revision",
            "item",
            "config_key",
            "parameters",
            "comparison",
            "desired_value",
            "enforcement_mode",
            "observed_value",
            "compliant",
            "state",
            "reason",
            "exit_code",
            "observed_at",
            "audit_job",
            "enforcement_job",
            "evidence",
        ]
        read_only_fields = fields


class ObservationFilter(django_filters.FilterSet):
    # Plain UUIDs: a choice filter would tell apart ids that do not exist and those of other sites.
    asset = django_filters.UUIDFilter(field_name="asset_id")
    profile = django_filters.UUIDFilter(field_name="profile_revision__profile_id")
    item = django_filters.UUIDFilter(field_name="item_id")
    config_key = django_filters.CharFilter(field_name="item__config_key__name", help_text="A key's name.")
    compliant = django_filters.ChoiceFilter(
        choices=[("true", "true"), ("false", "false")],
        method="filter_compliant",
        help_text="Readings that failed (state error) are neither.",
    )
    state = django_filters.ChoiceFilter(choices=ObservationState.choices)

    class Meta:
        model = ConfigurationObservation
        fields = ["asset", "profile", "item", "config_key", "compliant", "state"]

    def filter_compliant(self, queryset, name, value):
        return queryset.filter(compliant=value == "true")


class ObservationViewSet(SiteScopedMixin, viewsets.ReadOnlyModelViewSet):
    """Actual state: the newest reading of each item on each asset of your sites (by an audit or an
    enforcement's re-read), items of earlier revisions included, each naming its revision."""

    serializer_class = ObservationSerializer
    filterset_class = ObservationFilter

    def get_queryset(self):
        return (
            ConfigurationObservation.objects.filter(asset__site__in=access.visible_sites(self.request.user))
            .select_related("asset", "item__config_key", "profile_revision__profile")
            .order_by("asset_id", "item_id")
        )


class DriftEventSerializer(serializers.ModelSerializer):
    config_key = serializers.CharField(source="item.config_key.name")
    desired_value = serializers.CharField(source="item.desired_value")
    comparison = serializers.CharField(source="item.comparison")
    profile_name = serializers.CharField(source="profile.name")
    profile_revision = serializers.IntegerField(source="profile_revision.revision")
    hostname = serializers.CharField(source="asset.hostname")

    class Meta:
        model = ConfigurationDriftEvent
        fields = [
            "id",
            "asset",
            "hostname",
            "profile",
            "profile_name",
            "profile_revision",
            "item",
            "config_key",
            "comparison",
            "desired_value",
            "from_state",
            "to_state",
            "observed_value",
            "detected_at",
            "audit_job",
            "enforcement_job",
            "evidence",
        ]
        read_only_fields = fields


class DriftEventFilter(django_filters.FilterSet):
    # Plain UUIDs, not model choices: a choice filter would answer 400 for an id that does not
    # exist and 200 for one in another site, telling the caller what exists elsewhere.
    asset = django_filters.UUIDFilter(field_name="asset_id")
    profile = django_filters.UUIDFilter(field_name="profile_id")
    item = django_filters.UUIDFilter(field_name="item_id")
    audit_job = django_filters.UUIDFilter(field_name="audit_job_id")
    enforcement_job = django_filters.UUIDFilter(field_name="enforcement_job_id")
    to_state = django_filters.ChoiceFilter(choices=ObservationState.choices)

    class Meta:
        model = ConfigurationDriftEvent
        fields = ["asset", "profile", "item", "to_state", "audit_job", "enforcement_job"]


class DriftEventViewSet(SiteScopedMixin, viewsets.ReadOnlyModelViewSet):
    """Changes of an item's compliance on an asset (drift, and back), newest first, of your sites."""

    serializer_class = DriftEventSerializer
    filterset_class = DriftEventFilter

    def get_queryset(self):
        return (
            ConfigurationDriftEvent.objects.filter(site__in=access.visible_sites(self.request.user))
            .select_related("item__config_key", "profile", "profile_revision", "asset")
            .order_by("-detected_at", "id")
        )


class AuditJobSerializer(serializers.ModelSerializer):
    status = StatusField(read_only=True)
    profile = serializers.UUIDField(source="assignment.profile_id")
    profile_revision = serializers.IntegerField(source="profile_revision.revision")
    site = serializers.CharField(source="site.name")
    requested_by = serializers.CharField(source="requested_by.username")
    psa_task_id = serializers.UUIDField()

    class Meta:
        model = ConfigurationAuditJob
        fields = [
            "id",
            "assignment",
            "profile",
            "profile_revision",
            "asset",
            "site",
            "psa_task_id",
            "status",
            "status_reason",
            "batch",
            "requested_by",
            "created_at",
            "started_at",
            "completed_at",
        ]
        read_only_fields = fields


class AuditJobFilter(django_filters.FilterSet):
    assignment = django_filters.UUIDFilter(field_name="assignment_id")
    asset = django_filters.UUIDFilter(field_name="asset_id")
    batch = django_filters.UUIDFilter(field_name="batch_id")

    class Meta:
        model = ConfigurationAuditJob
        fields = ["assignment", "asset", "status", "batch"]


class AuditJobViewSet(SiteScopedMixin, viewsets.ReadOnlyModelViewSet):
    """Audit jobs (kind ``profile_audit``) of your sites; each is also in ``GET /api/v1/jobs/``."""

    serializer_class = AuditJobSerializer
    filterset_class = AuditJobFilter

    def get_queryset(self):
        return (
            ConfigurationAuditJob.objects.filter(site__in=access.visible_sites(self.request.user))
            .select_related("assignment", "profile_revision", "site", "requested_by")
            .order_by("-created_at", "id")
        )


class ComplianceSummarySiteRowSerializer(serializers.Serializer):
    profile = serializers.UUIDField(source="profile_id")
    profile_name = serializers.CharField()
    site = serializers.CharField(source="site_name")
    observed = serializers.IntegerField(help_text="Readings of the profile's current revision on the site's assets.")
    compliant = serializers.IntegerField(source="compliant_count")
    non_compliant = serializers.IntegerField(source="non_compliant_count")
    errors = serializers.IntegerField(source="error_count", help_text="Readings the endpoint could not make.")
    percent = serializers.FloatField(help_text="Compliant readings, in percent of the readings.")


class ComplianceSummaryAssetRowSerializer(ComplianceSummarySiteRowSerializer):
    """A row of ``by=asset``: the profile on one asset."""

    asset = serializers.UUIDField(source="asset_id")
    hostname = serializers.CharField()


class ClosedSummaryRows(OpenApiSerializerExtension):
    """The summary's rows carry exactly their fields (``additionalProperties: false``), so that a
    row answers exactly one of the ``oneOf`` of its operation: a site's row or an asset's."""

    target_class = ComplianceSummarySiteRowSerializer
    match_subclasses = True

    def map_serializer(self, auto_schema, direction):
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        return {**schema, "additionalProperties": False}


class ComplianceSummaryQuery(serializers.Serializer):
    site = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    profile = serializers.UUIDField(required=False)
    by = serializers.ChoiceField(choices=compliance.SUMMARY_BY, required=False, default="site")


@extend_schema(
    parameters=[
        OpenApiParameter("site", description="One site's rows, by name."),
        OpenApiParameter("profile", str, description="One profile's rows, by id."),
        OpenApiParameter(
            "by",
            enum=compliance.SUMMARY_BY,
            description="`site` (the default): a row per profile and site; `asset`: a row per profile and asset.",
        ),
    ],
    responses=PolymorphicProxySerializer(
        component_name="ComplianceSummaryRow",
        serializers=[ComplianceSummarySiteRowSerializer, ComplianceSummaryAssetRowSerializer],
        resource_type_field_name=None,
        many=True,
    ),
)
class ComplianceSummaryView(generics.ListAPIView):
    """Fleet compliance: per profile and site you may see (or per profile and asset, ``by=asset``),
    how many readings of the profile's current revision comply, drifted or could not be made, on
    assets a live assignment still covers. An asset's own items are at
    ``/api/v1/assets/{id}/compliance/`` (docs/profiles.md)."""

    serializer_class = ComplianceSummarySiteRowSerializer
    filter_backends = []  # the rows are computed, not a queryset: site, profile and by are read below

    def _query(self) -> dict:
        query = ComplianceSummaryQuery(data=self.request.query_params)
        query.is_valid(raise_exception=True)  # 400 naming the parameter
        return query.validated_data

    def get_serializer_class(self):
        if self._query()["by"] == "asset":
            return ComplianceSummaryAssetRowSerializer
        return ComplianceSummarySiteRowSerializer

    def get_queryset(self):
        query = self._query()
        sites = access.visible_sites(self.request.user)
        site = None
        if "site" in query:
            site = sites.filter(name=query["site"]).first()
            if site is None:  # another site's name is as unknown as no site's: Law 7
                return []
        return compliance.summary(sites, site=site, profile=query.get("profile"), by=query["by"])
