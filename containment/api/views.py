"""``/api/v1/containment/``: an EDR asks to isolate or release an asset; every role lists the
containment jobs of the sites it may see (docs/integrations.md#edr-containment)."""

import django_filters
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.response import Response

from containment import services
from containment.models import ContainmentAction, ContainmentJob
from evidence.models import RmmEvidence
from rmm.access import roles as access
from rmm.core.api import SiteScopedMixin
from rmm.core.api_schema import RETIRED_TARGET, refusal
from rmm.engine.api.views import StatusField


class ContainmentJobSerializer(serializers.ModelSerializer):
    status = StatusField(read_only=True)
    asset = serializers.UUIDField(source="asset_id")
    psa_task_id = serializers.UUIDField()
    psa_case_id = serializers.UUIDField(source="psa_task.case_id")
    site = serializers.CharField(source="site.name")
    requested_by = serializers.CharField(source="requested_by.username")
    containment = serializers.CharField(
        source="asset.containment", help_text="The asset's containment as its endpoint last reported it."
    )
    evidence = serializers.SerializerMethodField()

    class Meta:
        model = ContainmentJob
        fields = [
            "id",
            "asset",
            "action",
            "reason",
            "psa_task_id",
            "psa_case_id",
            "status",
            "status_reason",
            "site",
            "requested_by",
            "created_at",
            "started_at",
            "completed_at",
            "server_endpoints",
            "dns",
            "containment",
            "evidence",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.ListField(child=serializers.UUIDField()))
    def get_evidence(self, job):
        rows = RmmEvidence.objects.filter(related_entity="containment_job", related_id=job.pk)
        return [str(pk) for pk in rows.order_by("history_sequence").values_list("pk", flat=True)]


class ContainmentRequestSerializer(serializers.Serializer):
    asset = serializers.UUIDField()
    action = serializers.ChoiceField(choices=ContainmentAction.choices)
    reason = serializers.CharField(max_length=services.MAX_REASON, help_text="Why, as the EDR tells it.")
    # Not required here on purpose: a request without authority is refused by the engine (Law 1),
    # which records the refusal; a serializer error would leave no trace.
    psa_task_id = serializers.UUIDField(required=False, allow_null=True)


class ContainmentJobFilter(django_filters.FilterSet):
    asset = django_filters.UUIDFilter(field_name="asset_id")
    psa_task = django_filters.UUIDFilter(field_name="psa_task_id")

    class Meta:
        model = ContainmentJob
        fields = ["status", "action", "asset", "psa_task"]


class ContainmentViewSet(SiteScopedMixin, mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Containment jobs of the sites you may see; ``POST`` (role ``edr``) requests one."""

    serializer_class = ContainmentJobSerializer
    filterset_class = ContainmentJobFilter

    def get_queryset(self):
        return (
            ContainmentJob.objects.filter(site__in=access.visible_sites(self.request.user))
            .select_related("site", "requested_by", "psa_task", "asset")
            .order_by("-created_at")
        )

    @extend_schema(
        request=ContainmentRequestSerializer,
        responses={
            200: ContainmentJobSerializer,
            201: ContainmentJobSerializer,
            404: refusal("No such asset among the sites the caller may see."),
            409: refusal("A release of an asset that is not contained, or a retired asset."),
        },
        description="201: a new containment job. 200: the same request is already in force or under "
        "way (a second isolate of a contained asset): that job, and no second rule set. "
        f"{RETIRED_TARGET.description}",
    )
    def create(self, request, *args, **kwargs):
        given = ContainmentRequestSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        job, created = services.request(
            request.user,
            asset_id=data["asset"],
            action=data["action"],
            reason=data["reason"],
            psa_task_id=data.get("psa_task_id"),
        )
        job = self.get_queryset().get(pk=job.pk)
        return Response(
            self.get_serializer(job).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )
