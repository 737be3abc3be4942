"""``/api/v1/packages/``: register a software package by upload (multipart) or by address and
hash (JSON), list them, and approve or reject a registration (docs/deployment.md)."""

import django_filters
from drf_spectacular.utils import extend_schema, extend_schema_field, inline_serializer
from rest_framework import generics, mixins, serializers, status, viewsets
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.response import Response

from deployment import services
from deployment.models import DeploymentAction, DeploymentJob, InstalledSoftware, InstallerType, SoftwarePackage
from evidence.models import RmmEvidence
from rmm.access import roles as access
from rmm.artefacts.api import decision_actions
from rmm.artefacts.states import ApprovalStatus
from rmm.core.api import SiteScopedMixin
from rmm.core.api_schema import RETIRED_TARGET, refusal
from rmm.core.errors import InvalidInput
from rmm.engine import services as engine
from rmm.engine.api.views import StatusField
from rmm.engine.states import JobStatus
from rmm.inventory.models import Asset


class PackageSerializer(serializers.ModelSerializer):
    status = serializers.ChoiceField(source="approval_status", choices=ApprovalStatus.choices, read_only=True)
    author = serializers.CharField(source="author.username", read_only=True)
    decided_by = serializers.CharField(source="decided_by.username", allow_null=True, read_only=True)
    interpreter = serializers.CharField(
        read_only=True, help_text="A script package's interpreter (sh or powershell); empty for the other types."
    )

    class Meta:
        model = SoftwarePackage
        fields = [
            "id",
            "name",
            "version",
            "revision",
            "installer_type",
            "interpreter",
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
    interpreter = serializers.ChoiceField(
        choices=["sh", "powershell"],
        required=False,
        allow_blank=True,
        default="",
        help_text="A script package's interpreter (required for script, empty for the others).",
    )
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


class DeploymentStepSerializer(serializers.Serializer):
    step = serializers.IntegerField(help_text="0: install or uninstall; 1: detection.")
    status = serializers.CharField()
    exit_code = serializers.IntegerField(allow_null=True)
    reason = serializers.CharField(allow_blank=True)
    structured = serializers.JSONField(allow_null=True, help_text="The detection read: installed, version.")


class DeploymentJobSerializer(serializers.ModelSerializer):
    status = StatusField(read_only=True)
    package = serializers.UUIDField(source="package_id")
    asset = serializers.UUIDField(source="asset_id")
    psa_task_id = serializers.UUIDField()
    psa_case_id = serializers.UUIDField(source="psa_task.case_id")
    batch = serializers.UUIDField(source="batch_id", allow_null=True)
    site = serializers.CharField(source="site.name")
    requested_by = serializers.CharField(source="requested_by.username")
    executed_at = serializers.DateTimeField(allow_null=True, help_text="When the install began on the endpoint.")
    steps = serializers.SerializerMethodField()
    evidence = serializers.SerializerMethodField()

    class Meta:
        model = DeploymentJob
        fields = [
            "id",
            "package",
            "action",
            "asset",
            "psa_task_id",
            "psa_case_id",
            "batch",
            "status",
            "status_reason",
            "site",
            "requested_by",
            "created_at",
            "executed_at",
            "completed_at",
            "steps",
            "evidence",
        ]
        read_only_fields = fields

    @extend_schema_field(DeploymentStepSerializer(many=True))
    def get_steps(self, job):
        return [
            {
                "step": i.step,
                "status": i.status,
                "exit_code": i.exit_code,
                "reason": i.reason,
                "structured": i.structured,
            }
            for i in engine.job_instructions(job).order_by("step", "issued_at")
        ]

    @extend_schema_field(serializers.ListField(child=serializers.UUIDField()))
    def get_evidence(self, job):
        rows = RmmEvidence.objects.filter(related_entity="deployment_job", related_id=job.pk)
        return [str(pk) for pk in rows.order_by("history_sequence").values_list("pk", flat=True)]


class DeploymentJobFilter(django_filters.FilterSet):
    # Plain UUIDs: a choice filter would tell an out-of-site caller what exists elsewhere.
    asset = django_filters.UUIDFilter(field_name="asset_id")
    package = django_filters.UUIDFilter(field_name="package_id")
    batch = django_filters.UUIDFilter(field_name="batch_id")
    psa_task = django_filters.UUIDFilter(field_name="psa_task_id")

    class Meta:
        model = DeploymentJob
        fields = ["status", "action", "asset", "package", "batch", "psa_task"]


class DeploymentJobViewSet(SiteScopedMixin, viewsets.ReadOnlyModelViewSet):
    """Deployment jobs of the sites you may see: one package on one asset each."""

    serializer_class = DeploymentJobSerializer
    filterset_class = DeploymentJobFilter

    def get_queryset(self):
        return (
            DeploymentJob.objects.filter(site__in=access.visible_sites(self.request.user))
            .select_related("site", "requested_by", "psa_task", "package", "asset")
            .order_by("-created_at")
        )


class InstalledPackageSerializer(serializers.ModelSerializer):
    class Meta:
        model = SoftwarePackage
        fields = ["id", "name", "version", "revision", "installer_type"]
        read_only_fields = fields


class InstalledSoftwareSerializer(serializers.ModelSerializer):
    package = InstalledPackageSerializer(read_only=True, help_text="The registration whose detection rule read it.")
    deployment_job = serializers.UUIDField(source="deployment_job_id", read_only=True)
    evidence = serializers.UUIDField(source="evidence_id", allow_null=True, read_only=True)

    class Meta:
        model = InstalledSoftware
        fields = ["name", "installed", "version", "read_at", "package", "deployment_job", "evidence"]
        read_only_fields = fields


class InstalledSoftwareFilter(django_filters.FilterSet):
    class Meta:
        model = InstalledSoftware
        fields = ["name", "installed"]


class AssetSoftwareView(SiteScopedMixin, generics.ListAPIView):
    """What deployments' detection reads last found on an asset, one row per package name (actual
    state, with the evidence of the read); an asset outside your sites answers 404."""

    serializer_class = InstalledSoftwareSerializer
    lookup_url_kwarg = "asset_id"
    filter_backends = []  # the asset is looked up unfiltered; its rows through InstalledSoftwareFilter

    def get_queryset(self):
        """The assets the caller may see (SiteScopedMixin looks the asset up among them)."""
        return Asset.objects.filter(site__in=access.visible_sites(self.request.user))

    @extend_schema(parameters=[InstalledSoftwareFilter])
    def list(self, request, *args, **kwargs):
        asset = self.get_object()
        rows = InstalledSoftwareFilter(
            request.query_params,
            queryset=InstalledSoftware.objects.filter(asset=asset).select_related("package").order_by("name"),
        )
        if not rows.is_valid():
            raise ValidationError(rows.errors)
        page = self.paginate_queryset(rows.qs)
        return self.get_paginated_response(self.get_serializer(page, many=True).data)


class DeploymentRequestSerializer(serializers.Serializer):
    package = serializers.UUIDField(help_text="An approved package.")
    action = serializers.ChoiceField(
        choices=DeploymentAction.choices,
        default=DeploymentAction.INSTALL,
        help_text="uninstall: the rollback (the package's detection rule names it).",
    )
    assets = serializers.ListField(
        child=serializers.UUIDField(), required=False, allow_empty=False, help_text="The assets; or give site."
    )
    site = serializers.CharField(required=False, help_text="Every asset of this site, instead of assets.")
    # Not required here on purpose: a deployment without authority is refused by the engine (Law
    # 1), which records the refusal; a serializer error would leave no trace.
    psa_task_id = serializers.UUIDField(required=False, allow_null=True)
    plan = serializers.JSONField(
        required=False,
        allow_null=True,
        help_text="canary, ring_size or ring_percent, growth, interval_seconds, failure_threshold_percent "
        "(docs/psa-integration.md#batches); none: the global waves.",
    )
    requires_approval = serializers.BooleanField(
        required=False, default=False, help_text="Each job waits for an approver too (besides the package's approval)."
    )


DeploymentAnswer = inline_serializer(
    "DeploymentResult",
    {
        "count": serializers.IntegerField(),
        "batch": serializers.UUIDField(
            help_text="The batch: GET /api/v1/batches/{id}/ for its progress, ring by ring."
        ),
        "psa_case_id": serializers.UUIDField(help_text="The case of the authorising task."),
        "status": serializers.ChoiceField(choices=JobStatus.choices, help_text="Every job's status."),
        "jobs": inline_serializer(
            "DeploymentJobRef", {"id": serializers.UUIDField(), "asset": serializers.UUIDField()}, many=True
        ),
    },
)


class DeploymentViewSet(viewsets.GenericViewSet):
    """``POST /api/v1/deployments/``: one approved package on many assets, in a batch."""

    serializer_class = DeploymentRequestSerializer

    @extend_schema(
        responses={
            201: DeploymentAnswer,
            404: refusal("An asset named is not one of your sites' (or does not exist); the field names it."),
            409: RETIRED_TARGET,
        }
    )
    def create(self, request):
        given = self.get_serializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        jobs = services.create_deployments(
            request.user,
            package_id=data["package"],
            psa_task_id=data.get("psa_task_id"),
            asset_ids=data.get("assets"),
            site_name=data.get("site"),
            plan=data.get("plan"),
            action=data["action"],
            requires_approval=data["requires_approval"],
        )
        return Response(
            {
                "count": len(jobs),
                "batch": str(jobs[0].batch_id),
                "psa_case_id": str(jobs[0].psa_task.case_id),
                "status": jobs[0].status,
                "jobs": [{"id": str(job.pk), "asset": str(job.asset_id)} for job in jobs],
            },
            status=status.HTTP_201_CREATED,
        )
