import django_filters
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from profiles import services
from profiles.models import Comparison, ConfigKey, ConfigurationItem, ConfigurationProfile, EnforcementMode
from rmm.artefacts.api import decision_actions
from rmm.artefacts.states import ApprovalStatus


class ScriptRefSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    version = serializers.IntegerField()
    sha256 = serializers.CharField()
    approval_status = serializers.ChoiceField(choices=ApprovalStatus.choices)


class KeyParameterSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    required = serializers.BooleanField()


class ConfigKeySerializer(serializers.ModelSerializer):
    status = serializers.ChoiceField(source="approval_status", choices=ApprovalStatus.choices, read_only=True)
    comparisons = serializers.ListField(child=serializers.ChoiceField(choices=Comparison.choices))
    parameters = KeyParameterSerializer(many=True, help_text="Given to its scripts as RMM_PARAM_<NAME>.")
    read_script = ScriptRefSerializer()
    set_script = ScriptRefSerializer(allow_null=True, help_text="None: the key can be audited, not enforced.")
    usable = serializers.SerializerMethodField(help_text="Approved, and its read and set scripts approved too.")
    author = serializers.CharField(source="author.username")
    decided_by = serializers.CharField(source="decided_by.username", allow_null=True)

    class Meta:
        model = ConfigKey
        fields = [
            "id",
            "name",
            "version",
            "description",
            "platform",
            "value_type",
            "status",
            "usable",
            "comparisons",
            "parameters",
            "read_script",
            "set_script",
            "content_sha256",
            "author",
            "created_at",
            "decided_by",
            "decided_at",
            "decision_reason",
        ]
        read_only_fields = fields

    def get_usable(self, key) -> bool:
        return all(
            artefact is None or artefact.approval_status == ApprovalStatus.APPROVED
            for artefact in (key, key.read_script, key.set_script)
        )


class ConfigKeyFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(field_name="approval_status", choices=ApprovalStatus.choices)

    class Meta:
        model = ConfigKey
        fields = ["name", "platform", "value_type", "status"]


class ConfigKeyViewSet(viewsets.ReadOnlyModelViewSet):
    """Config key definitions, every version: how a key is read and set (docs/profiles.md)."""

    serializer_class = ConfigKeySerializer
    queryset = ConfigKey.objects.select_related("author", "decided_by", "read_script", "set_script").all()
    filterset_class = ConfigKeyFilter

    # The one approve/reject shape of every artefact kind, on the one approval service.
    approve, reject = decision_actions(ConfigKeySerializer)


class ConfigurationItemSerializer(serializers.Serializer):
    id = serializers.UUIDField(read_only=True)
    config_key = serializers.CharField(max_length=200, help_text="A key's name; its newest usable version is used.")
    config_key_version = serializers.IntegerField(read_only=True, help_text="The key version the item uses.")
    parameters = serializers.DictField(
        child=serializers.CharField(allow_blank=True, trim_whitespace=False),
        required=False,
        help_text="The key's parameters by name.",
    )
    desired_value = serializers.CharField(
        allow_blank=True, required=False, trim_whitespace=False, help_text="Empty for the absent comparison."
    )
    comparison = serializers.ChoiceField(choices=Comparison.choices)
    enforcement_mode = serializers.ChoiceField(choices=EnforcementMode.choices, default=EnforcementMode.AUDIT)

    def to_representation(self, item):
        return {
            "id": str(item.pk),
            "config_key": item.config_key.name,
            "config_key_version": item.config_key.version,
            "parameters": item.parameters,
            "desired_value": item.desired_value,
            "comparison": item.comparison,
            "enforcement_mode": item.enforcement_mode,
        }


class ProfileSerializer(serializers.ModelSerializer):
    items = ConfigurationItemSerializer(many=True, help_text="The current revision's items.")
    revision = serializers.IntegerField(source="current_revision.revision", read_only=True)
    revision_created_by = serializers.CharField(source="current_revision.created_by.username", read_only=True)
    revision_created_at = serializers.DateTimeField(source="current_revision.created_at", read_only=True)
    created_by = serializers.CharField(source="created_by.username", read_only=True)
    description = serializers.CharField(allow_blank=True, required=False, default="")

    class Meta:
        model = ConfigurationProfile
        fields = [
            "id",
            "name",
            "profile_type",
            "description",
            "revision",
            "revision_created_by",
            "revision_created_at",
            "items",
            "created_by",
            "created_at",
        ]
        read_only_fields = ["created_at"]
        # Names are checked by the service (one 400 shape, and nothing written on any error).
        extra_kwargs = {"name": {"validators": []}}


class ProfileRevisionSerializer(serializers.Serializer):
    items = ConfigurationItemSerializer(
        many=True, help_text="The whole new item list; earlier revisions stay as they were."
    )


def flat_errors(detail, where: str = "") -> dict:
    """DRF's nested errors named as the service names fields: ``{"items[0].comparison": [...]}``."""
    if isinstance(detail, dict):
        found = {}
        for key, value in detail.items():
            name = f"{where}[{key}]" if where and str(key).isdigit() else f"{where}.{key}" if where else str(key)
            found.update(flat_errors(value, name))
        return found
    if isinstance(detail, list) and any(isinstance(value, dict) for value in detail):
        found = {}
        for index, value in enumerate(detail):
            found.update(flat_errors(value, f"{where}[{index}]"))
        return found
    return {where: detail}


def valid(serializer) -> dict:
    """The serializer's validated data, or a 400 in the one flat shape the service's errors have."""
    if not serializer.is_valid():
        raise ValidationError(flat_errors(serializer.errors))
    return serializer.validated_data


class ProfileItemSerializer(serializers.ModelSerializer):
    revision = serializers.IntegerField(source="revision.revision", help_text="The profile revision it belongs to.")
    config_key = serializers.CharField(source="config_key.name")
    config_key_version = serializers.IntegerField(source="config_key.version")
    parameters = serializers.DictField(child=serializers.CharField(), help_text="The key's parameters by name.")

    class Meta:
        model = ConfigurationItem
        fields = [
            "id",
            "revision",
            "position",
            "config_key",
            "config_key_version",
            "parameters",
            "desired_value",
            "comparison",
            "enforcement_mode",
        ]
        read_only_fields = fields


class ProfileItemsQuery(serializers.Serializer):
    revision = serializers.IntegerField(required=False, min_value=1)


class ProfileViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Configuration profiles (desired state) with their current revision's items."""

    serializer_class = ProfileSerializer
    queryset = ConfigurationProfile.objects.select_related(
        "created_by", "current_revision__created_by"
    ).prefetch_related("current_revision__items__config_key")
    filterset_fields = ["name", "profile_type"]

    def _answer(self, profile, code=status.HTTP_200_OK) -> Response:
        return Response(self.get_serializer(self.get_queryset().get(pk=profile.pk)).data, status=code)

    @extend_schema(responses={201: ProfileSerializer})
    def create(self, request, *args, **kwargs):
        profile = services.create_profile(request.user, **valid(self.get_serializer(data=request.data)))
        return self._answer(profile, status.HTTP_201_CREATED)

    @extend_schema(request=ProfileRevisionSerializer, responses={201: ProfileSerializer})
    @action(detail=True, methods=["post"])
    def revisions(self, request, pk=None):
        """A new revision of the profile from a whole new item list (201: the profile at it)."""
        profile = self.get_object()
        items = valid(ProfileRevisionSerializer(data=request.data))["items"]
        services.revise_profile(request.user, profile, items=items)
        return self._answer(profile, status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[OpenApiParameter("revision", int, description="This revision's items (default: the current one).")],
        responses={200: ProfileItemSerializer(many=True)},
    )
    @action(detail=True, methods=["get"], filter_backends=[])
    def items(self, request, pk=None):
        """The items of the profile's current revision, or of ``revision``, in order (paginated)."""
        profile = self.get_object()
        query = valid(ProfileItemsQuery(data=request.query_params))
        current = profile.current_revision.revision
        revision = profile.revisions.filter(revision=query.get("revision", current)).first()
        if revision is None:
            raise ValidationError({"revision": [f"This profile's revisions are 1 to {current}."]})
        items = revision.items.select_related("revision", "config_key").order_by("position")
        page = self.paginate_queryset(items)
        return self.get_paginated_response(ProfileItemSerializer(page, many=True).data)
