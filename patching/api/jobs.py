"""Scans and patch jobs through the API (docs/patching.md): ``POST /api/v1/patch-scans/``,
``/api/v1/patch-jobs/`` with their per-asset progress, and the request's approval or rejection."""

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from patching import jobs as services
from patching.api.views import SEVERITY_NAMES
from patching.models import PatchInstallJob, PatchJob, PatchJobStatus, RebootPolicy, Severity
from rmm.access import roles as access
from rmm.core.api import SiteScopedMixin
from rmm.core.api_schema import RETIRED_TARGET, refusal
from rmm.engine.models import Batch
from rmm.engine.states import JobStatus

PLAN_HELP = (
    "canary, ring_size or ring_percent, growth, interval_seconds, failure_threshold_percent "
    "(docs/psa-integration.md#batches); none: the global waves."
)


class TargetsSerializer(serializers.Serializer):
    assets = serializers.ListField(
        child=serializers.UUIDField(), required=False, allow_empty=False, help_text="The assets; or give site."
    )
    site = serializers.CharField(required=False, help_text="Every asset of this site, instead of assets.")
    # Not required here: a request without authority is refused by the engine (Law 1), which
    # records the refusal; a serializer error would leave no trace.
    psa_task_id = serializers.UUIDField(required=False, allow_null=True)
    plan = serializers.JSONField(required=False, allow_null=True, help_text=PLAN_HELP)


ScanAnswer = inline_serializer(
    "PatchScanResult",
    {
        "count": serializers.IntegerField(),
        "batch": serializers.UUIDField(),
        "psa_case_id": serializers.UUIDField(),
        "jobs": inline_serializer(
            "PatchScanJobRef", {"id": serializers.UUIDField(), "asset": serializers.UUIDField()}, many=True
        ),
    },
)


class PatchScanViewSet(viewsets.GenericViewSet):
    """``POST /api/v1/patch-scans/``: a read-only scan of each asset, on a PSA task's authority."""

    serializer_class = TargetsSerializer

    @extend_schema(responses={202: ScanAnswer, 409: RETIRED_TARGET})
    def create(self, request):
        given = self.get_serializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        jobs = services.create_scans(
            request.user,
            psa_task_id=data.get("psa_task_id"),
            asset_ids=data.get("assets"),
            site_name=data.get("site"),
            plan=data.get("plan"),
        )
        return Response(
            {
                "count": len(jobs),
                "batch": str(jobs[0].batch_id),
                "psa_case_id": str(jobs[0].psa_task.case_id),
                "jobs": [{"id": str(job.pk), "asset": str(job.asset_id)} for job in jobs],
            },
            status=status.HTTP_202_ACCEPTED,
        )


class PatchJobRequestSerializer(TargetsSerializer):
    patches = serializers.ListField(
        child=serializers.UUIDField(), required=False, allow_empty=False, help_text="Catalog ids; or min_severity."
    )
    min_severity = serializers.CharField(
        required=False, help_text=f"Every missing patch of this severity or higher: {', '.join(SEVERITY_NAMES)}."
    )
    scheduled_for = serializers.DateTimeField(required=False, help_text="Not before this time; none: now.")
    reboot_policy = serializers.CharField(
        required=False, default=RebootPolicy.IF_REQUIRED, help_text=f"One of: {', '.join(RebootPolicy.values)}."
    )


class PatchInstallJobSerializer(serializers.ModelSerializer):
    asset = serializers.UUIDField(source="asset_id")
    hostname = serializers.CharField(source="asset.hostname")
    packages = serializers.JSONField(help_text="[[package, version], ...] it installs.")

    class Meta:
        model = PatchInstallJob
        fields = [
            "id",
            "asset",
            "hostname",
            "status",
            "status_reason",
            "ring",
            "packages",
            "started_at",
            "completed_at",
        ]
        read_only_fields = fields


class PatchJobSerializer(serializers.ModelSerializer):
    status = serializers.SerializerMethodField(help_text="Its decision; once released, its batch's status.")
    psa_task_id = serializers.UUIDField()
    psa_case_id = serializers.UUIDField()
    site = serializers.CharField(source="site.name")
    batch = serializers.UUIDField(source="batch_id", allow_null=True)
    patches = serializers.PrimaryKeyRelatedField(many=True, read_only=True)
    min_severity = serializers.SerializerMethodField()
    requested_by = serializers.CharField(source="requested_by.username")
    decided_by = serializers.CharField(source="decided_by.username", allow_null=True)
    progress = serializers.SerializerMethodField(help_text="How many of its per-asset jobs are in each status.")
    jobs = serializers.SerializerMethodField(help_text="Its per-asset jobs (the first 500).")

    class Meta:
        model = PatchJob
        fields = [
            "id",
            "status",
            "status_reason",
            "psa_task_id",
            "psa_case_id",
            "site",
            "scheduled_for",
            "held_until",
            "reboot_policy",
            "patches",
            "min_severity",
            "batch",
            "requested_by",
            "created_at",
            "decided_by",
            "decided_at",
            "progress",
            "jobs",
        ]
        read_only_fields = fields

    def get_status(self, request) -> str:
        batch = Batch.objects.filter(pk=request.batch_id).first() if request.batch_id else None
        return services.status_of(request, batch)

    def get_min_severity(self, request) -> str | None:
        return None if request.min_severity is None else Severity(request.min_severity).label

    def get_progress(self, request) -> dict[str, int]:
        return services.progress(request)

    def get_jobs(self, request) -> list:
        rows = PatchInstallJob.objects.filter(patch_job=request).select_related("asset").order_by("ring", "asset_id")
        return PatchInstallJobSerializer(rows[:500], many=True).data


class PatchJobViewSet(SiteScopedMixin, viewsets.ReadOnlyModelViewSet):
    """Patch jobs of the sites you may see; ``POST`` requests one, a second person approves or
    rejects it whole (docs/patching.md)."""

    serializer_class = PatchJobSerializer

    def get_queryset(self):
        return (
            PatchJob.objects.filter(site__in=access.visible_sites(self.request.user))
            .select_related("site", "requested_by", "decided_by")
            .prefetch_related("patches")
            .order_by("-created_at")
        )

    def get_serializer_class(self):
        return PatchJobRequestSerializer if self.action == "create" else PatchJobSerializer

    @extend_schema(
        request=PatchJobRequestSerializer,
        responses={
            201: inline_serializer(
                "PatchJobCreated",
                {
                    "id": serializers.UUIDField(),
                    "status": serializers.ChoiceField(choices=PatchJobStatus.choices),
                    "batch": serializers.UUIDField(),
                    "psa_case_id": serializers.UUIDField(),
                    "scheduled_for": serializers.DateTimeField(),
                    "reboot_policy": serializers.CharField(),
                    "jobs": inline_serializer(
                        "PatchJobRef",
                        {
                            "id": serializers.UUIDField(),
                            "asset": serializers.UUIDField(),
                            "status": serializers.ChoiceField(choices=JobStatus.choices),
                            "packages": serializers.JSONField(),
                        },
                        many=True,
                    ),
                },
            ),
            409: RETIRED_TARGET,
        },
    )
    def create(self, request):
        given = PatchJobRequestSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        made = services.create_patch_job(
            request.user,
            psa_task_id=data.get("psa_task_id"),
            asset_ids=data.get("assets"),
            site_name=data.get("site"),
            patches=data.get("patches"),
            min_severity=data.get("min_severity"),
            scheduled_for=data.get("scheduled_for"),
            reboot_policy=data["reboot_policy"],
            plan=data.get("plan"),
        )
        rows = PatchInstallJob.objects.filter(patch_job=made).order_by("ring", "asset_id")
        return Response(
            {
                "id": str(made.pk),
                "status": made.status,
                "batch": str(made.batch_id),
                "psa_case_id": str(made.psa_case_id),
                "scheduled_for": made.scheduled_for,
                "reboot_policy": made.reboot_policy,
                "jobs": [
                    {"id": str(job.pk), "asset": str(job.asset_id), "status": job.status, "packages": job.packages}
                    for job in rows
                ],
            },
            status=status.HTTP_201_CREATED,
        )

    @extend_schema(
        request=None,
        responses={
            200: PatchJobSerializer,
            403: refusal("Your own request, a role that may not approve, or no privileged approval permission."),
            409: refusal("It awaits no decision."),
        },
    )
    @action(detail=True, methods=["post"])
    def approve(self, request, pk=None):
        """Approve the whole request: released now, or at its scheduled_for."""
        services.approve(request.user, self.get_object())
        return Response(PatchJobSerializer(self.get_queryset().get(pk=pk)).data)

    @extend_schema(
        request=inline_serializer("PatchJobRejection", {"reason": serializers.CharField()}),
        responses={200: PatchJobSerializer, 403: refusal("Not yours to decide."), 409: refusal("Decided already.")},
    )
    @action(detail=True, methods=["post"])
    def reject(self, request, pk=None):
        """Reject the whole request, with the reason: none of its jobs runs."""
        services.reject(request.user, self.get_object(), str(request.data.get("reason") or ""))
        return Response(PatchJobSerializer(self.get_queryset().get(pk=pk)).data)
