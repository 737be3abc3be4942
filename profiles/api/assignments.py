"""Profile assignments: a profile on an asset or a whole site under a PSA task, its four-eyes
decision, changes and withdrawal (docs/profiles.md, Assignments). Per site: an assignment of a
site the caller may not see answers 404."""

from datetime import datetime

import django_filters
from django.db.models import Q
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from profiles import assignments as services
from profiles import scheduling
from profiles.models import AssetConfigurationProfile, AssignmentStatus
from rmm.access import roles as access
from rmm.core.api import SiteScopedMixin, reason_of
from rmm.core.api_schema import ReasonSerializer, refusal

NOT_AWAITING = refusal("The assignment is not awaiting approval, was decided meanwhile, or its profile was revised.")
NOT_LIVE = refusal("The assignment is stopped or rejected.")


class AssignmentSerializer(serializers.ModelSerializer):
    profile_name = serializers.CharField(source="profile.name", read_only=True)
    psa_task_id = serializers.UUIDField(read_only=True)
    current_revision = serializers.IntegerField(
        source="profile.current_revision.revision", read_only=True, help_text="The profile's current revision."
    )
    approved_revision = serializers.IntegerField(
        source="approved_revision.revision",
        read_only=True,
        allow_null=True,
        help_text="The revision a second person last approved for enforcement (None: never).",
    )
    enforcement_approved = serializers.SerializerMethodField(
        help_text="Drift on enforce-mode items may be enforced: active, and the current revision approved."
    )
    schedule_state = serializers.SerializerMethodField(
        help_text="`scheduled`: audited on its interval; `stopped`: no more scheduled audits."
    )
    schedule_stopped_reason = serializers.SerializerMethodField(
        help_text='Why the schedule stopped (e.g. "authority withdrawn: the PSA task expired"); "" while scheduled.'
    )
    next_audit_at = serializers.SerializerMethodField(
        help_text="When the schedule next audits the asset (an asset's assignment; None for a site's or once stopped)."
    )
    requested_by = serializers.CharField(source="requested_by.username", read_only=True)
    decided_by = serializers.CharField(source="decided_by.username", read_only=True, allow_null=True)

    class Meta:
        model = AssetConfigurationProfile
        fields = [
            "id",
            "profile",
            "profile_name",
            "asset",
            "site",
            "psa_task_id",
            "status",
            "status_reason",
            "current_revision",
            "approved_revision",
            "enforcement_approved",
            "audit_interval_seconds",
            "schedule_state",
            "schedule_stopped_reason",
            "next_audit_at",
            "requested_by",
            "decided_by",
            "decided_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_enforcement_approved(self, assignment) -> bool:
        return services.enforcement_approved(assignment)

    def get_schedule_state(self, assignment) -> str:
        return scheduling.schedule_state(assignment)[0]

    def get_schedule_stopped_reason(self, assignment) -> str:
        return scheduling.schedule_state(assignment)[1]

    def get_next_audit_at(self, assignment) -> datetime | None:
        return scheduling.next_audit_at(assignment, assignment.asset_id) if assignment.asset_id else None


class AssignmentCreateSerializer(serializers.Serializer):
    profile = serializers.UUIDField()
    asset = serializers.UUIDField(required=False, allow_null=True, help_text="An asset, or:")
    site = serializers.UUIDField(required=False, allow_null=True, help_text="a whole site (exactly one of the two).")
    psa_task_id = serializers.UUIDField(help_text="An approved, unexpired PSA task whose case's site holds the target.")
    audit_interval_seconds = serializers.IntegerField(
        required=False,
        help_text=f"Default {services.DEFAULT_INTERVAL}; {services.MIN_INTERVAL} to {services.MAX_INTERVAL}.",
    )


class AssignmentChangeSerializer(serializers.Serializer):
    psa_task_id = serializers.UUIDField(required=False)
    audit_interval_seconds = serializers.IntegerField(required=False)


class WithdrawSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, help_text="Why (optional): in its status_reason.")


class AssignmentFilter(django_filters.FilterSet):
    # Plain UUIDs: a choice filter would tell apart an id that does not exist and one elsewhere.
    profile = django_filters.UUIDFilter(field_name="profile_id")
    asset = django_filters.UUIDFilter(field_name="asset_id")
    site = django_filters.UUIDFilter(method="at_site", help_text="Assigned to the site or to one of its assets.")
    status = django_filters.ChoiceFilter(choices=AssignmentStatus.choices)

    class Meta:
        model = AssetConfigurationProfile
        fields = ["profile", "asset", "site", "status"]

    def at_site(self, queryset, name, value):
        return queryset.filter(Q(site_id=value) | Q(asset__site_id=value))


class ProfileAssignmentViewSet(
    SiteScopedMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.ReadOnlyModelViewSet,
):
    """Profiles assigned to assets and sites of the sites you may see."""

    serializer_class = AssignmentSerializer
    filterset_class = AssignmentFilter

    def get_queryset(self):
        sites = access.visible_sites(self.request.user)
        return (
            AssetConfigurationProfile.objects.filter(Q(site__in=sites) | Q(asset__site__in=sites))
            .select_related("profile__current_revision", "approved_revision", "asset", "requested_by", "decided_by")
            .order_by("-created_at")
        )

    def _answer(self, assignment, code=status.HTTP_200_OK) -> Response:
        return Response(self.get_serializer(self.get_queryset().get(pk=assignment.pk)).data, status=code)

    @extend_schema(
        request=AssignmentCreateSerializer,
        responses={
            201: AssignmentSerializer,
            409: refusal("The asset is retired, or the profile is already assigned to it."),
            404: refusal("No such asset or site among your sites (asset or site)."),
        },
    )
    def create(self, request, *args, **kwargs):
        """Assign a profile: active, or awaiting approval when its current revision has enforce-mode items."""
        ser = AssignmentCreateSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        data = ser.validated_data
        assignment = services.create_assignment(
            request.user,
            profile_id=data["profile"],
            asset_id=data.get("asset"),
            site_id=data.get("site"),
            psa_task_id=data["psa_task_id"],
            audit_interval_seconds=data.get("audit_interval_seconds"),
        )
        return self._answer(assignment, status.HTTP_201_CREATED)

    @extend_schema(request=AssignmentChangeSerializer, responses={200: AssignmentSerializer, 409: NOT_LIVE})
    def partial_update(self, request, *args, **kwargs):
        """A new PSA task or audit interval; with enforce-mode items it awaits approval again."""
        assignment = self.get_object()
        ser = AssignmentChangeSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        services.change_assignment(request.user, assignment, **ser.validated_data)
        return self._answer(assignment)

    @extend_schema(responses={204: None, 409: NOT_LIVE})
    def destroy(self, request, *args, **kwargs):
        """Withdraw (stop) the assignment; the row stays, stopped, with who withdrew it."""
        services.withdraw_assignment(request.user, self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=WithdrawSerializer, responses={200: AssignmentSerializer, 409: NOT_LIVE})
    @action(detail=True, methods=["post"])
    def withdraw(self, request, pk=None):
        """Withdraw (stop) the assignment, with an optional reason."""
        assignment = services.withdraw_assignment(request.user, self.get_object(), reason_of(request))
        return self._answer(assignment)

    @extend_schema(request=None, responses={200: AssignmentSerializer, 409: NOT_AWAITING})
    @action(detail=True, methods=["post"])
    def approve(self, request, pk=None):
        """A second person approves enforcement of the profile's current revision (never its
        requester nor the revision's author)."""
        assignment = services.approve_assignment(self.get_object(), request.user)
        return self._answer(assignment)

    @extend_schema(request=ReasonSerializer, responses={200: AssignmentSerializer, 409: NOT_AWAITING})
    @action(detail=True, methods=["post"])
    def reject(self, request, pk=None):
        """A second person refuses enforcement of the profile's current revision, with a reason."""
        assignment = services.reject_assignment(self.get_object(), request.user, reason_of(request))
        return self._answer(assignment)
