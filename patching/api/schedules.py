"""Scan schedules through the API (docs/patching.md): ``/api/v1/patch-scan-schedules/`` to create,
list and stop a site's standing scans, per site."""

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from patching import schedules as services
from patching.models import PatchScanSchedule
from rmm.access import roles as access
from rmm.core.api import SiteScopedMixin
from rmm.core.api_schema import refusal
from rmm.engine.services import recurring


class ScheduleRequestSerializer(serializers.Serializer):
    site = serializers.CharField(help_text="The site whose assets are scanned.")
    # Not required here: a schedule without authority is refused by the service, which records it.
    psa_task_id = serializers.UUIDField(required=False, allow_null=True, help_text="The standing task.")
    interval_seconds = serializers.IntegerField(
        required=False,
        default=86400,
        help_text=f"Each asset is scanned once per interval ({services.MIN_INTERVAL} to {recurring.MAX_INTERVAL}).",
    )


class ScheduleSerializer(serializers.ModelSerializer):
    site = serializers.CharField(source="site.name")
    psa_task_id = serializers.UUIDField()
    psa_case_id = serializers.UUIDField(source="psa_task.case_id")
    created_by = serializers.CharField(source="created_by.username")
    stopped_by = serializers.CharField(source="stopped_by.username", allow_null=True)

    class Meta:
        model = PatchScanSchedule
        fields = [
            "id",
            "site",
            "psa_task_id",
            "psa_case_id",
            "interval_seconds",
            "status",
            "status_reason",
            "created_by",
            "created_at",
            "dispatched_until",
            "scans_dispatched",
            "stopped_by",
            "stopped_at",
        ]
        read_only_fields = fields


class PatchScanScheduleViewSet(SiteScopedMixin, mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Standing scan schedules of the sites you may see: each asset of the site is scanned once per
    interval, at its own moment, while the PSA task authorises it (docs/patching.md)."""

    serializer_class = ScheduleSerializer
    filterset_fields = ["status"]

    def get_queryset(self):
        return (
            PatchScanSchedule.objects.filter(site__in=access.visible_sites(self.request.user))
            .select_related("site", "psa_task", "created_by", "stopped_by")
            .order_by("-created_at")
        )

    @extend_schema(
        request=ScheduleRequestSerializer,
        responses={201: ScheduleSerializer, 409: refusal("The site has an active scan schedule.")},
    )
    def create(self, request):
        given = ScheduleRequestSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        made = services.create_schedule(
            request.user,
            site_name=data["site"],
            psa_task_id=data.get("psa_task_id"),
            interval_seconds=data["interval_seconds"],
        )
        return Response(ScheduleSerializer(self.get_queryset().get(pk=made.pk)).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=inline_serializer("PatchScanScheduleStop", {"reason": serializers.CharField()}),
        responses={200: ScheduleSerializer, 409: refusal("Stopped already.")},
    )
    @action(detail=True, methods=["post"])
    def stop(self, request, pk=None):
        """Stop the schedule, with the reason: no more scans from it."""
        services.stop(request.user, self.get_object(), str(request.data.get("reason") or ""))
        return Response(ScheduleSerializer(self.get_queryset().get(pk=pk)).data)
