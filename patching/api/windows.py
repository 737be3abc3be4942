"""Maintenance windows through the API (docs/patching.md): ``/api/v1/maintenance-windows/``, per
site: when a site's patch jobs may start."""

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.response import Response

from patching import windows as services
from patching.models import MaintenanceWindow
from rmm.access import roles as access
from rmm.core.api import SiteScopedMixin


class WindowRequestSerializer(serializers.Serializer):
    site = serializers.CharField()
    days = serializers.JSONField(help_text=f"Weekdays, each one of: {', '.join(services.DAYS)}.")
    start = serializers.TimeField(help_text="When it opens, the site's wall clock (HH:MM).")
    duration_minutes = serializers.IntegerField(help_text=f"{services.MIN_MINUTES} to {services.MAX_MINUTES}.")
    timezone = serializers.CharField(help_text="An IANA time zone, e.g. Europe/Berlin.")


class WindowSerializer(serializers.ModelSerializer):
    site = serializers.CharField(source="site.name")
    days = serializers.SerializerMethodField()
    start = serializers.SerializerMethodField(help_text="When it opens, the site's wall clock (HH:MM).")
    created_by = serializers.CharField(source="created_by.username")

    class Meta:
        model = MaintenanceWindow
        fields = ["id", "site", "days", "start", "duration_minutes", "timezone", "created_by", "created_at"]
        read_only_fields = fields

    def get_days(self, window) -> list[str]:
        return [services.DAYS[day] for day in window.days]

    def get_start(self, window) -> str:
        return window.start.strftime("%H:%M")


class MaintenanceWindowViewSet(
    SiteScopedMixin, mixins.CreateModelMixin, mixins.DestroyModelMixin, viewsets.ReadOnlyModelViewSet
):
    """Maintenance windows of the sites you may see: a patch job approved and due outside them is
    held until the next one opens (docs/patching.md)."""

    serializer_class = WindowSerializer

    def get_queryset(self):
        return (
            MaintenanceWindow.objects.filter(site__in=access.visible_sites(self.request.user))
            .select_related("site", "created_by")
            .order_by("site__name", "start")
        )

    @extend_schema(request=WindowRequestSerializer, responses={201: WindowSerializer})
    def create(self, request):
        given = WindowRequestSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        made = services.create_window(
            request.user,
            site_name=data["site"],
            days=data["days"],
            start=data["start"],
            duration_minutes=data["duration_minutes"],
            timezone_name=data["timezone"],
        )
        return Response(WindowSerializer(self.get_queryset().get(pk=made.pk)).data, status=status.HTTP_201_CREATED)

    def destroy(self, request, pk=None):
        services.delete_window(request.user, self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)
