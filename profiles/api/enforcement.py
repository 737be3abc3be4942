"""Enforcement jobs through the API (read only: they are made by audits that find drift on an
approved assignment's enforce-mode items), restricted to the caller's sites."""

import django_filters
from rest_framework import serializers, viewsets

from profiles.models import ConfigurationEnforcementJob
from rmm.access import roles as access
from rmm.core.api import SiteScopedMixin
from rmm.engine.api.views import StatusField


class EnforcementJobSerializer(serializers.ModelSerializer):
    status = StatusField(read_only=True)
    profile = serializers.UUIDField(source="assignment.profile_id")
    profile_revision = serializers.IntegerField(source="profile_revision.revision")
    config_key = serializers.CharField(source="item.config_key.name")
    parameters = serializers.DictField(source="item.parameters", child=serializers.CharField())
    comparison = serializers.CharField(source="item.comparison")
    desired_value = serializers.CharField(source="item.desired_value")
    site = serializers.CharField(source="site.name")
    requested_by = serializers.CharField(source="requested_by.username")
    approved_by = serializers.SerializerMethodField(help_text="Whose approval of the assignment covers it.")
    psa_task_id = serializers.UUIDField()

    class Meta:
        model = ConfigurationEnforcementJob
        fields = [
            "id",
            "assignment",
            "profile",
            "profile_revision",
            "item",
            "config_key",
            "parameters",
            "comparison",
            "desired_value",
            "asset",
            "site",
            "psa_task_id",
            "audit_job",
            "before_value",
            "before_state",
            "before_observed_at",
            "before_evidence",
            "after_value",
            "after_state",
            "status",
            "status_reason",
            "batch",
            "requested_by",
            "approved_by",
            "created_at",
            "started_at",
            "completed_at",
        ]
        read_only_fields = fields

    def get_approved_by(self, job) -> str | None:
        return job.decided_by.username if job.decided_by_id else None


class EnforcementJobFilter(django_filters.FilterSet):
    # Plain UUIDs: a choice filter would tell apart ids that do not exist and those of other sites.
    assignment = django_filters.UUIDFilter(field_name="assignment_id")
    asset = django_filters.UUIDFilter(field_name="asset_id")
    item = django_filters.UUIDFilter(field_name="item_id")
    audit_job = django_filters.UUIDFilter(field_name="audit_job_id")

    class Meta:
        model = ConfigurationEnforcementJob
        fields = ["assignment", "asset", "item", "audit_job", "status"]


class EnforcementJobViewSet(SiteScopedMixin, viewsets.ReadOnlyModelViewSet):
    """Enforcement jobs (kind ``profile_enforce``) of your sites, newest first; each is also in
    ``GET /api/v1/jobs/``."""

    serializer_class = EnforcementJobSerializer
    filterset_class = EnforcementJobFilter

    def get_queryset(self):
        return (
            ConfigurationEnforcementJob.objects.filter(site__in=access.visible_sites(self.request.user))
            .select_related("assignment", "profile_revision", "item__config_key", "site", "requested_by", "decided_by")
            .order_by("-created_at", "id")
        )
