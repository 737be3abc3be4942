"""``/api/v1/packages/``: register a software package by upload (multipart) or by address and
hash (JSON), list them, and approve or reject a registration (docs/deployment.md)."""

import django_filters
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.response import Response

from deployment import services
from deployment.models import InstallerType, SoftwarePackage
from rmm.artefacts.api import decision_actions
from rmm.artefacts.states import ApprovalStatus
from rmm.core.errors import InvalidInput


class PackageSerializer(serializers.ModelSerializer):
    status = serializers.ChoiceField(source="approval_status", choices=ApprovalStatus.choices, read_only=True)
    author = serializers.CharField(source="author.username", read_only=True)
    decided_by = serializers.CharField(source="decided_by.username", allow_null=True, read_only=True)

    class Meta:
        model = SoftwarePackage
        fields = [
            "id",
            "name",
            "version",
            "revision",
            "installer_type",
            "silent_args",
            "detection",
            "uninstall_args",
            "installer_uri",
            "hash",
            "size",
            "filename",
            "status",
            "author",
            "created_at",
            "decided_by",
            "decided_at",
            "decision_reason",
        ]
        read_only_fields = fields


class PackageRegistrationSerializer(serializers.Serializer):
    """Either ``file`` (multipart) or ``installer_uri`` with ``hash`` and ``size`` (JSON)."""

    name = serializers.CharField(max_length=200)
    version = serializers.CharField(max_length=100)
    installer_type = serializers.ChoiceField(choices=InstallerType.choices)
    silent_args = serializers.CharField(required=False, allow_blank=True, default="", trim_whitespace=False)
    uninstall_args = serializers.CharField(required=False, allow_blank=True, default="", trim_whitespace=False)
    detection = serializers.JSONField(
        required=False,
        default=dict,
        help_text='How to tell it is installed: {"type": "package", "name": ..., "version": ...}, '
        '{"type": "file", "path": ...} or {"type": "registry", "key": ..., "value": ...}.',
    )
    file = serializers.FileField(required=False, help_text="The installer (multipart).")
    installer_uri = serializers.CharField(required=False, max_length=2000, help_text="https only.")
    hash = serializers.CharField(required=False, help_text="sha256 of the installer; with installer_uri.")
    size = serializers.IntegerField(required=False, help_text="Its size in bytes; with installer_uri.")


class PackageFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(field_name="approval_status", choices=ApprovalStatus.choices)

    class Meta:
        model = SoftwarePackage
        fields = ["name", "version", "installer_type", "hash", "status"]


class PackageViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Software packages, every registration; like scripts, not a site's: every role sees them."""

    serializer_class = PackageSerializer
    queryset = SoftwarePackage.objects.select_related("author", "decided_by").all()
    filterset_class = PackageFilter

    def get_parsers(self):
        """The registration takes a file (multipart) or an address (JSON); everything else JSON."""
        # The action is not set yet when DRF builds the request; the list route's POST is create.
        if "create" in (getattr(self, "action", None), getattr(self, "action_map", {}).get("post")):
            return [JSONParser(), MultiPartParser()]
        return super().get_parsers()

    # The one approve/reject shape of every artefact kind, on the one approval service.
    approve, reject = decision_actions(PackageSerializer)

    @extend_schema(request=PackageRegistrationSerializer, responses={201: PackageSerializer})
    def create(self, request, *args, **kwargs):
        given = PackageRegistrationSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = dict(given.validated_data)
        upload = data.pop("file", None)
        by_uri = {key: data.pop(key) for key in ("installer_uri", "hash", "size") if key in data}
        if upload is not None and by_uri:
            raise InvalidInput("Either a file or an installer_uri with its hash and size, not both.", field="file")
        if upload is not None:
            package = services.register_upload(request.user, upload=upload, **data)
        elif "installer_uri" in by_uri:
            for key in ("hash", "size"):
                if key not in by_uri:
                    raise InvalidInput("Required with installer_uri.", field=key)
            package = services.register_uri(request.user, **by_uri, **data)
        else:
            raise InvalidInput("A file, or an installer_uri with its hash and size.", field="file")
        return Response(self.get_serializer(package).data, status=status.HTTP_201_CREATED)
