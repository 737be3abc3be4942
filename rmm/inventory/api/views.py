import django_filters
from drf_spectacular.utils import extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from rmm.access import roles as access
from rmm.core.api import SiteScopedMixin, reason_of
from rmm.core.api_schema import ReasonSerializer, refusal
from rmm.inventory import services
from rmm.inventory.models import Agent, Asset, Site

AssetAgent = inline_serializer(
    "AssetAgent",
    {
        "id": serializers.UUIDField(),
        "version": serializers.CharField(),
        "last_seen_at": serializers.DateTimeField(allow_null=True),
        "revoked": serializers.BooleanField(),
        "rebooting": serializers.BooleanField(help_text="Rebooting after a step asked for it (not offline)."),
    },
    allow_null=True,
    help_text="The asset's enrolled agent, if any.",
)
AssetFacts = inline_serializer(
    "AssetFacts",
    {
        "reported_at": serializers.DateTimeField(),
        "facts_hash": serializers.CharField(),
    },
    allow_null=True,
    help_text="The facts the agent last reported (more keys than these), if any.",
)


class AssetSerializer(serializers.ModelSerializer):
    site = serializers.CharField(source="site.name", read_only=True)
    agent = serializers.SerializerMethodField()
    facts = serializers.SerializerMethodField()
    containment = serializers.ChoiceField(
        choices=["none", "contained", "released"],
        read_only=True,
        help_text="Network containment as the endpoint last reported it (POST /api/v1/containment/).",
    )

    class Meta:
        model = Asset
        fields = [
            "id",
            "hostname",
            "os",
            "architecture",
            "site",
            "created_at",
            "agent",
            "facts",
            "retired_at",
            "retired_by",
            "retired_reason",
            "containment",
        ]

    @extend_schema_field(AssetAgent)
    def get_agent(self, obj):
        agent = getattr(obj, "agent", None)
        if agent is None:
            return None
        return {
            "id": str(agent.pk),
            "version": agent.version,
            "last_seen_at": agent.last_seen_at,
            "revoked": agent.revoked_at is not None,
            "rebooting": agent.rebooting_until is not None,
        }

    @extend_schema_field(AssetFacts)
    def get_facts(self, obj):
        facts = getattr(obj, "facts", None)
        if facts is None:
            return None
        # The agent's keys never stand in for the two the server adds.
        return {**facts.facts, "reported_at": facts.reported_at, "facts_hash": facts.facts_hash}


class AssetFilter(django_filters.FilterSet):
    hostname = django_filters.CharFilter(field_name="hostname")
    site = django_filters.CharFilter(field_name="site__name")
    retired = django_filters.ChoiceFilter(
        choices=[("true", "true"), ("false", "false")],
        method="filter_retired",
        help_text="true: the retired assets; false (the list's default): the active ones.",
    )

    class Meta:
        model = Asset
        fields = ["hostname", "site", "retired"]

    def filter_retired(self, queryset, name, value):
        return queryset.filter(retired_at__isnull=value != "true")


class AssetViewSet(SiteScopedMixin, viewsets.ReadOnlyModelViewSet):
    """Assets of the sites you may see; the list holds the active ones unless ``retired`` says
    otherwise. Actual state is written only by agents; admins may retire an asset."""

    serializer_class = AssetSerializer
    filterset_class = AssetFilter

    def get_queryset(self):
        assets = (
            Asset.objects.filter(site__in=access.visible_sites(self.request.user))
            .select_related("site", "agent", "facts")
            .order_by("hostname", "id")
        )
        if self.action == "list" and "retired" not in self.request.query_params:
            assets = assets.filter(retired_at__isnull=True)
        return assets

    @extend_schema(
        request=ReasonSerializer,
        responses={200: AssetSerializer, 409: refusal("This asset is already retired.")},
    )
    @action(detail=True, methods=["post"])
    def retire(self, request, pk=None):
        """Retire the asset: its agent revoked (its work aborted), gone from active lists and job
        targets, its history and evidence kept."""
        asset = self.get_object()
        services.retire_asset(request.user, asset, reason_of(request))
        return Response(self.get_serializer(self.get_queryset().get(pk=asset.pk)).data)


class SiteSerializer(serializers.ModelSerializer):
    class Meta:
        model = Site
        fields = ["id", "name", "created_at"]


class SiteViewSet(SiteScopedMixin, viewsets.ReadOnlyModelViewSet):
    serializer_class = SiteSerializer

    def get_queryset(self):
        return access.visible_sites(self.request.user).order_by("name")


class AgentSerializer(serializers.ModelSerializer):
    asset = serializers.UUIDField(source="asset_id", read_only=True)
    hostname = serializers.CharField(source="asset.hostname", read_only=True)
    site = serializers.CharField(source="asset.site.name", read_only=True)
    revoked = serializers.SerializerMethodField()
    rotation_pending = serializers.SerializerMethodField()
    capabilities = serializers.SerializerMethodField(help_text="What the agent said it can do (docs/agent.md).")

    class Meta:
        model = Agent
        fields = [
            "id",
            "asset",
            "hostname",
            "site",
            "version",
            "enrolled_at",
            "last_seen_at",
            "revoked",
            "revoked_at",
            "revoked_reason",
            "rotation_pending",
            "capabilities",
            "rebooting_until",
        ]

    def get_revoked(self, obj) -> bool:
        return obj.revoked_at is not None

    def get_rotation_pending(self, obj) -> bool:
        return obj.rotation_requested_at is not None

    def get_capabilities(self, obj) -> list[str]:
        return [name for name in obj.capabilities.split(",") if name]


class AgentViewSet(SiteScopedMixin, viewsets.ReadOnlyModelViewSet):
    """Agents of the sites you may see; admins may revoke them or rotate their secret."""

    serializer_class = AgentSerializer

    def get_queryset(self):
        return Agent.objects.filter(asset__site__in=access.visible_sites(self.request.user)).select_related(
            "asset__site"
        )

    @extend_schema(
        request=ReasonSerializer,
        responses={200: AgentSerializer, 409: refusal("This agent is already revoked.")},
    )
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        agent = self.get_object()
        services.revoke_agent(request.user, agent, reason_of(request))
        return Response(self.get_serializer(self.get_queryset().get(pk=agent.pk)).data)

    @extend_schema(request=None, responses=AgentSerializer)
    @action(detail=True, methods=["post"])
    def rotate(self, request, pk=None):
        agent = self.get_object()
        services.request_rotation(request.user, agent)
        return Response(self.get_serializer(self.get_queryset().get(pk=agent.pk)).data)
