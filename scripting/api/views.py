import django_filters
from drf_spectacular.utils import extend_schema, extend_schema_field, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from evidence.models import RmmEvidence
from rmm.access import roles as access
from rmm.artefacts.api import decision_actions
from rmm.core.api import SiteScopedMixin, reason_of
from rmm.core.api_schema import RETIRED_TARGET, ReasonSerializer, refusal
from rmm.engine.api.views import StatusField
from rmm.engine.states import JobStatus
from scripting import services
from scripting.models import Language, Script, ScriptJob

JOB_CONFLICT = refusal("The job is not awaiting approval, or its authority is no longer approved.")


class ScriptSerializer(serializers.ModelSerializer):
    author = serializers.CharField(source="author.username", read_only=True)
    decided_by = serializers.CharField(source="decided_by.username", read_only=True, allow_null=True)
    language = serializers.ChoiceField(choices=Language.choices)
    timeout_seconds = serializers.IntegerField(
        min_value=1, max_value=86400, required=False, help_text="Default: RMM_DEFAULT_TIMEOUT_SECONDS (300)."
    )
    content = serializers.CharField(trim_whitespace=False, help_text="Exact script text; its sha256 names it.")

    class Meta:
        model = Script
        fields = [
            "id",
            "name",
            "version",
            "language",
            "content",
            "sha256",
            "requires_approval",
            "privileged",
            "timeout_seconds",
            "created_at",
            "author",
            "approval_status",
            "decided_by",
            "decided_at",
            "decision_reason",
        ]
        read_only_fields = ["version", "sha256", "created_at", "approval_status", "decided_at", "decision_reason"]


class ScriptViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Scripts are immutable versions: POST with an existing name makes the next version."""

    serializer_class = ScriptSerializer
    queryset = Script.objects.select_related("author", "decided_by").all()
    filterset_fields = ["name", "approval_status", "language"]

    @extend_schema(responses={201: ScriptSerializer, 409: refusal("Another version of this name was made at once.")})
    def create(self, request, *args, **kwargs):
        ser = self.get_serializer(data=request.data)
        ser.is_valid(raise_exception=True)
        script = services.create_script(request.user, **ser.validated_data)
        return Response(self.get_serializer(script).data, status=status.HTTP_201_CREATED)

    # The one approve/reject shape of every artefact kind, on the one approval service.
    approve, reject = decision_actions(ScriptSerializer)


class ScriptResultSerializer(serializers.Serializer):
    stdout = serializers.CharField()
    stderr = serializers.CharField()
    stdout_escaped = serializers.BooleanField(
        help_text="stdout is escaped: each \\\\ is one backslash and each \\xNN one byte (docs/evidence.md)."
    )
    stderr_escaped = serializers.BooleanField(help_text="The same for stderr.")
    exit_code = serializers.IntegerField(allow_null=True)
    hash = serializers.CharField()
    stdout_truncated = serializers.BooleanField()
    stderr_truncated = serializers.BooleanField()
    structured = serializers.JSONField(
        allow_null=True, help_text="The JSON document the script wrote to $RMM_RESULT_PATH, or null (docs/agent.md)."
    )


class ScriptJobSerializer(serializers.ModelSerializer):
    status = StatusField(read_only=True)
    script = serializers.UUIDField(source="script_id")
    asset = serializers.UUIDField(source="asset_id")
    # Not required here on purpose: a job without authority is refused by the service (Law 1),
    # which records the refusal in the history; a serializer error would leave no trace.
    psa_task_id = serializers.UUIDField(
        required=False, allow_null=True, help_text="The approved PSA task that authorises this job."
    )
    site = serializers.CharField(source="site.name", read_only=True)
    requested_by = serializers.CharField(source="requested_by.username", read_only=True)
    decided_by = serializers.CharField(source="decided_by.username", read_only=True, allow_null=True)
    result = serializers.SerializerMethodField()
    evidence = serializers.SerializerMethodField()

    class Meta:
        model = ScriptJob
        fields = [
            "id",
            "script",
            "asset",
            "psa_task_id",
            "status",
            "status_reason",
            "site",
            "requested_by",
            "decided_by",
            "decided_at",
            "created_at",
            "started_at",
            "completed_at",
            "result",
            "evidence",
        ]
        read_only_fields = ["status", "status_reason", "decided_at", "created_at", "started_at", "completed_at"]

    @extend_schema_field(ScriptResultSerializer(allow_null=True))
    def get_result(self, obj):
        result = getattr(obj, "result", None)
        return ScriptResultSerializer(result).data if result is not None else None

    @extend_schema_field(serializers.ListField(child=serializers.UUIDField()))
    def get_evidence(self, obj):
        return [
            str(pk)
            for pk in RmmEvidence.objects.filter(related_entity="script_job", related_id=obj.pk).values_list(
                "pk", flat=True
            )
        ]


class ScriptJobBatchSerializer(serializers.Serializer):
    script = serializers.UUIDField()
    assets = serializers.ListField(
        child=serializers.UUIDField(), required=False, allow_empty=False, help_text="The assets; or give site."
    )
    site = serializers.CharField(required=False, help_text="Every asset of this site, instead of assets.")
    psa_task_id = serializers.UUIDField(
        required=False, allow_null=True, help_text="The approved PSA task that authorises these jobs."
    )
    plan = serializers.JSONField(
        required=False,
        allow_null=True,
        help_text="canary, ring_size or ring_percent, growth, interval_seconds, failure_threshold_percent "
        "(docs/psa-integration.md#batches); none: the global waves.",
    )


ScriptJobBatchAnswer = inline_serializer(
    "ScriptJobBatchResult",
    {
        "count": serializers.IntegerField(),
        "batch": serializers.UUIDField(help_text="The batch: GET /api/v1/batches/{id}/ for its progress."),
        "status": serializers.ChoiceField(choices=JobStatus.choices, help_text="Every job's status."),
        "jobs": inline_serializer(
            "ScriptJobBatchJob", {"id": serializers.UUIDField(), "asset": serializers.UUIDField()}, many=True
        ),
    },
)


class ScriptJobFilter(django_filters.FilterSet):
    # Plain UUIDs, not model choices: a choice filter would answer 400 for an id that does not
    # exist and 200 for one in another site, telling the caller what exists elsewhere.
    asset = django_filters.UUIDFilter(field_name="asset_id")
    psa_task = django_filters.UUIDFilter(field_name="psa_task_id")

    class Meta:
        model = ScriptJob
        fields = ["status", "asset", "script", "psa_task"]


class ScriptJobViewSet(SiteScopedMixin, mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Script jobs of the sites you may see."""

    serializer_class = ScriptJobSerializer
    filterset_class = ScriptJobFilter

    def get_queryset(self):
        return (
            ScriptJob.objects.filter(site__in=access.visible_sites(self.request.user))
            .select_related("site", "requested_by", "decided_by", "result", "script", "asset")
            .order_by("-created_at")
        )

    @extend_schema(responses={201: ScriptJobSerializer, 409: RETIRED_TARGET})
    def create(self, request, *args, **kwargs):
        ser = self.get_serializer(data=request.data)
        ser.is_valid(raise_exception=True)
        job = services.create_script_job(
            request.user,
            script_id=ser.validated_data["script_id"],
            asset_id=ser.validated_data["asset_id"],
            psa_task_id=ser.validated_data.get("psa_task_id"),
        )
        return Response(self.get_serializer(self.get_queryset().get(pk=job.pk)).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=ScriptJobBatchSerializer, responses={201: ScriptJobBatchAnswer, 409: RETIRED_TARGET})
    @action(detail=False, methods=["post"])
    def batch(self, request):
        """One script on many assets, one job each, in a batch released ring by ring (or in waves)."""
        ser = ScriptJobBatchSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        jobs = services.create_script_jobs(
            request.user,
            script_id=ser.validated_data["script"],
            psa_task_id=ser.validated_data.get("psa_task_id"),
            asset_ids=ser.validated_data.get("assets"),
            site_name=ser.validated_data.get("site"),
            plan=ser.validated_data.get("plan"),
        )
        return Response(
            {
                "count": len(jobs),
                "batch": str(jobs[0].batch_id),
                "status": jobs[0].status,
                "jobs": [{"id": str(job.pk), "asset": str(job.asset_id)} for job in jobs],
            },
            status=status.HTTP_201_CREATED,
        )

    @extend_schema(request=None, responses={200: ScriptJobSerializer, 409: JOB_CONFLICT})
    @action(detail=True, methods=["post"])
    def approve(self, request, pk=None):
        job = self.get_object()
        services.approve_script_job(job, request.user)
        return Response(self.get_serializer(self.get_queryset().get(pk=job.pk)).data)

    @extend_schema(request=ReasonSerializer, responses={200: ScriptJobSerializer, 409: JOB_CONFLICT})
    @action(detail=True, methods=["post"])
    def reject(self, request, pk=None):
        job = self.get_object()
        services.reject_script_job(job, request.user, reason_of(request))
        return Response(self.get_serializer(self.get_queryset().get(pk=job.pk)).data)
