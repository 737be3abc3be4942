from django.conf import settings
from django.db.models import Q
from django.urls import reverse
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from rmm.access import roles as access
from rmm.core.api import Pagination, SiteScopedMixin, reason_of
from rmm.core.api_schema import ReasonSerializer, refusal
from rmm.engine import registry
from rmm.engine.models import Batch, BatchStatus, KillSwitch, KillSwitchScope
from rmm.engine.services import batches, kill_switches, listing
from rmm.engine.states import JobStatus, status_word


class KillSwitchSerializer(serializers.ModelSerializer):
    scope = serializers.ChoiceField(choices=KillSwitchScope.choices)
    target = serializers.CharField(
        required=False,
        allow_blank=True,
        allow_null=True,
        write_only=True,
        help_text="The site's name or the asset's id; none for global.",
    )
    site = serializers.CharField(source="site.name", read_only=True, allow_null=True)
    asset = serializers.UUIDField(source="asset_id", read_only=True, allow_null=True)
    engaged = serializers.BooleanField(read_only=True)
    engaged_by = serializers.CharField(source="engaged_by.username", read_only=True)
    released_by = serializers.CharField(source="released_by.username", read_only=True, allow_null=True)

    class Meta:
        model = KillSwitch
        fields = [
            "id",
            "scope",
            "target",
            "site",
            "asset",
            "reason",
            "engaged",
            "engaged_by",
            "engaged_at",
            "released_by",
            "released_at",
            "release_reason",
        ]
        read_only_fields = ["engaged_at", "released_at", "release_reason"]


class KillSwitchViewSet(SiteScopedMixin, mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Kill switches at global, site or asset scope: engage (POST) and release."""

    serializer_class = KillSwitchSerializer
    filterset_fields = ["scope"]

    def get_queryset(self):
        return KillSwitch.objects.filter(
            Q(scope=KillSwitchScope.GLOBAL) | Q(site__in=access.visible_sites(self.request.user))
        ).select_related("site", "asset", "engaged_by", "released_by")

    def create(self, request, *args, **kwargs):
        ser = self.get_serializer(data=request.data)
        ser.is_valid(raise_exception=True)
        switch = kill_switches.engage(
            request.user,
            scope=ser.validated_data["scope"],
            target=ser.validated_data.get("target") or None,
            reason=ser.validated_data["reason"],
        )
        return Response(self.get_serializer(switch).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=ReasonSerializer,
        responses={200: KillSwitchSerializer, 409: refusal("This kill switch is already released.")},
    )
    @action(detail=True, methods=["post"])
    def release(self, request, pk=None):
        switch = kill_switches.release(request.user, self.get_object(), reason_of(request))
        return Response(self.get_serializer(switch).data)


class JobQuerySerializer(serializers.Serializer):
    """The job list's filters: the script-jobs list's names, plus the kind and the PSA case."""

    kind = serializers.CharField(required=False, help_text="A registered job kind, e.g. `script`.")
    status = serializers.ChoiceField(choices=JobStatus.choices, required=False)
    asset = serializers.UUIDField(required=False)
    psa_task = serializers.UUIDField(required=False)
    psa_case = serializers.UUIDField(required=False)
    batch = serializers.UUIDField(required=False)

    def validate_kind(self, value: str) -> str:
        if value not in {kind.name for kind in registry.all_kinds()}:
            names = ", ".join(sorted(kind.name for kind in registry.all_kinds()))
            raise serializers.ValidationError(f"Not a job kind; one of: {names}.")
        return value


class StatusField(serializers.ChoiceField):
    """A job's status as the console and the evidence reports say it (``states.status_word``)."""

    def __init__(self, **kwargs):
        super().__init__(choices=JobStatus.choices, **kwargs)

    def to_representation(self, value):
        return status_word(value)


class JobSerializer(serializers.Serializer):
    kind = serializers.CharField()
    id = serializers.UUIDField()
    status = StatusField()
    asset = serializers.UUIDField(source="asset_ref")
    site = serializers.CharField(source="site_name")
    psa_task_id = serializers.UUIDField(source="task_ref", allow_null=True)
    psa_case_id = serializers.UUIDField(source="case_ref", allow_null=True)
    batch = serializers.UUIDField(source="batch_ref", allow_null=True, help_text="The batch it belongs to, if any.")
    created_at = serializers.DateTimeField(source="created")
    url = serializers.SerializerMethodField(
        help_text="The job at its kind's own endpoint (none for a kind without one)."
    )

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_url(self, row: dict) -> str | None:
        detail = registry.get(row["kind"]).api_detail
        return reverse(detail, kwargs={"pk": row["id"]}) if detail else None


class JobPagination(Pagination):
    """``Pagination`` that counts at most ``RMM_API_COUNT_LIMIT`` jobs, or to the page's end when that
    is further: counting all of a million jobs took 300 to 600 ms. Past it, ``count`` is a lower
    bound (``count_exact`` false) that still lies beyond the page, so ``next`` is there while jobs
    follow it."""

    def get_count(self, queryset: listing.JobRows) -> int:
        # An offset can be any size; a database's LIMIT is at most a signed 64-bit integer.
        bound = min(max(settings.RMM_API_COUNT_LIMIT, self.get_offset(self.request) + self.limit) + 1, 2**63 - 1)
        count = queryset.count(most=bound)
        self.count_exact = count < bound
        return count

    def get_paginated_response(self, data):
        return Response(
            {
                "count": self.count,
                "count_exact": self.count_exact,
                "next": self.get_next_link(),
                "previous": self.get_previous_link(),
                "results": data,
            }
        )

    def get_paginated_response_schema(self, schema):
        paginated = super().get_paginated_response_schema(schema)
        properties = paginated["properties"]
        properties["count"]["description"] = (
            "How many jobs match, when `count_exact`; otherwise at least this many (the count stops "
            "one job past `RMM_API_COUNT_LIMIT` or past the page's end, whichever is further)."
        )
        paginated["properties"] = {
            "count": properties.pop("count"),
            "count_exact": {"type": "boolean", "description": "Whether `count` is every job that matches."},
            **properties,
        }
        paginated["required"] = ["count", "count_exact", "next", "previous", "results"]
        return paginated


class JobViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Every job of every kind in the sites you may see, newest first: what a PSA polls."""

    serializer_class = JobSerializer
    pagination_class = JobPagination
    filter_backends: list = []  # the filters apply to each kind's table before the union

    def get_queryset(self):
        query = JobQuerySerializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        return listing.job_rows(self.request.user, listing.JobQuery(**query.validated_data))

    @extend_schema(parameters=[JobQuerySerializer])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)


class BatchRingSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="0 is the canary ring.")
    size = serializers.IntegerField()
    pending = serializers.IntegerField(help_text="Awaiting approval, or queued (released or not).")
    running = serializers.IntegerField()
    succeeded = serializers.IntegerField()
    failed = serializers.IntegerField(help_text="Failed, timed out or lost.")
    aborted = serializers.IntegerField(help_text="Aborted or rejected.")


class BatchSerializer(serializers.ModelSerializer):
    kind = serializers.CharField(source="job_kind", read_only=True)
    status = serializers.ChoiceField(choices=BatchStatus.choices, read_only=True)
    site = serializers.CharField(source="site.name", read_only=True)
    requested_by = serializers.CharField(source="requested_by.username", read_only=True)
    rings = serializers.SerializerMethodField()

    class Meta:
        model = Batch
        fields = [
            "id",
            "kind",
            "status",
            "halt_reason",
            "held_until",
            "plan",
            "site",
            "requested_by",
            "created_at",
            "released_rings",
            "results",
            "failed",
            "rings",
        ]
        read_only_fields = fields

    @extend_schema_field(BatchRingSerializer(many=True))
    def get_rings(self, batch: Batch) -> list[dict]:
        return batches.progress(batch)


class BatchViewSet(SiteScopedMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """A batch of the sites you may see: its plan, status and progress per ring (a constant number
    of queries); resume a halted one."""

    serializer_class = BatchSerializer

    def get_queryset(self):
        return Batch.objects.filter(site__in=access.visible_sites(self.request.user)).select_related(
            "site", "requested_by"
        )

    @extend_schema(
        request=None,
        responses={200: BatchSerializer, 409: refusal("The batch is not halted.")},
    )
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        batch = batches.resume(self.get_object(), request.user)
        return Response(self.get_serializer(self.get_queryset().get(pk=batch.pk)).data)
