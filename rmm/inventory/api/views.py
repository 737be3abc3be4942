import django_filters
from rest_framework import serializers, viewsets

from rmm import access
from rmm.inventory.models import Asset, Site


class AssetSerializer(serializers.ModelSerializer):
    site = serializers.CharField(source="site.name", read_only=True)
    agent = serializers.SerializerMethodField()
    facts = serializers.SerializerMethodField()

    class Meta:
        model = Asset
        fields = ["id", "hostname", "os", "architecture", "site", "created_at", "agent", "facts"]

    def get_agent(self, obj) -> dict | None:
        agent = getattr(obj, "agent", None)
        if agent is None:
            return None
        return {
            "id": str(agent.pk),
            "version": agent.version,
            "last_seen_at": agent.last_seen_at,
            "revoked": agent.revoked_at is not None,
        }

    def get_facts(self, obj) -> dict | None:
        facts = getattr(obj, "facts", None)
        if facts is None:
            return None
        return {"reported_at": facts.reported_at, "facts_hash": facts.facts_hash, **facts.facts}


class AssetFilter(django_filters.FilterSet):
    hostname = django_filters.CharFilter(field_name="hostname")
    site = django_filters.CharFilter(field_name="site__name")

    class Meta:
        model = Asset
        fields = ["hostname", "site"]


class AssetViewSet(viewsets.ReadOnlyModelViewSet):
    """Assets of the sites you may see. Read-only: actual state is written only by agents."""

    serializer_class = AssetSerializer
    filterset_class = AssetFilter

    def get_queryset(self):
        return (
            Asset.objects.filter(site__in=access.visible_sites(self.request.user))
            .select_related("site", "agent", "facts")
            .order_by("hostname", "id")
        )


class SiteSerializer(serializers.ModelSerializer):
    class Meta:
        model = Site
        fields = ["id", "name", "created_at"]


class SiteViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = SiteSerializer

    def get_queryset(self):
        return access.visible_sites(self.request.user).order_by("name")
