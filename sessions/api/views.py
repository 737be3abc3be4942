"""``/api/v1/remote-sessions/``: open, watch, end and decide remote sessions of the sites the
caller may see; ``/api/v1/session-policies/``: propose and decide versions of their policies
(docs/sessions.md)."""

from __future__ import annotations

import django_filters
from django.urls import reverse
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from evidence.models import RmmEvidence
from rmm.access import roles as access
from rmm.artefacts.api import decision_actions
from rmm.core.api import SiteScopedMixin, reason_of
from rmm.core.api_schema import ReasonSerializer, refusal
from rmm.engine.api.views import StatusField
from sessions import policies, services
from sessions.models import EndReason, RemoteSession, SessionPolicy, SessionType

DECISION_CONFLICT = refusal("The session is not awaiting approval, or its authority is no longer approved.")


class RemoteSessionSerializer(serializers.ModelSerializer):
    status = StatusField(read_only=True)
    asset = serializers.UUIDField(source="asset_id")
    initiated_by = serializers.CharField(source="initiated_by.username")
    psa_task_id = serializers.UUIDField()
    psa_case_id = serializers.UUIDField(source="psa_task.case_id")
    site = serializers.CharField(source="site.name")
    ended_by = serializers.CharField(source="ended_by.username", allow_null=True, default=None)
    live = serializers.BooleanField(help_text="Started and not ended.")
    duration_seconds = serializers.SerializerMethodField(help_text="From its start to its end, or to now.")
    join_url = serializers.SerializerMethodField(help_text="The console page that joins or plays the session.")
    evidence = serializers.SerializerMethodField()

    class Meta:
        model = RemoteSession
        fields = [
            "id",
            "asset",
            "initiated_by",
            "session_type",
            "provider",
            "privileged",
            "psa_task_id",
            "psa_case_id",
            "site",
            "status",
            "status_reason",
            "created_at",
            "started_at",
            "ended_at",
            "live",
            "duration_seconds",
            "end_reason",
            "ended_by",
            "recorded",
            "recording_sha256",
            "join_url",
            "evidence",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.FloatField(allow_null=True))
    def get_duration_seconds(self, session: RemoteSession) -> float | None:
        return services.duration_seconds(session)

    def get_join_url(self, session: RemoteSession) -> str:
        return reverse("remote-session", args=[session.pk])

    @extend_schema_field(serializers.ListField(child=serializers.UUIDField()))
    def get_evidence(self, session: RemoteSession) -> list[str]:
        rows = RmmEvidence.objects.filter(related_entity="remote_session", related_id=session.pk)
        return [str(pk) for pk in rows.order_by("history_sequence").values_list("pk", flat=True)]


class OpenSessionSerializer(serializers.Serializer):
    asset = serializers.UUIDField()
    session_type = serializers.ChoiceField(choices=SessionType.choices)
    provider = serializers.CharField(
        max_length=40,
        default="terminal",
        help_text="terminal: the built-in one; meshcentral (session_type remote_control): when configured.",
    )
    # Not required here on purpose: a session without authority is refused by the engine (Law 1),
    # which records the refusal; a serializer error would leave no trace.
    psa_task_id = serializers.UUIDField(required=False, allow_null=True)
    privileged = serializers.BooleanField(default=False, help_text="A root shell: always waits for an approver.")


class OpenedSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.CharField()
    join_url = serializers.CharField()


class RemoteSessionFilter(django_filters.FilterSet):
    asset = django_filters.UUIDFilter(field_name="asset_id")
    psa_task = django_filters.UUIDFilter(field_name="psa_task_id")
    live = django_filters.BooleanFilter(method="filter_live")
    end_reason = django_filters.ChoiceFilter(choices=EndReason.choices)

    class Meta:
        model = RemoteSession
        fields = ["status", "asset", "psa_task", "provider", "end_reason"]

    def filter_live(self, queryset, name, value):
        live = queryset.filter(started_at__isnull=False, ended_at__isnull=True)
        return live if value else queryset.exclude(pk__in=live.values("pk"))


class RemoteSessionViewSet(SiteScopedMixin, mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Remote sessions of the sites you may see; ``POST`` (technician, admin) opens one."""

    serializer_class = RemoteSessionSerializer
    filterset_class = RemoteSessionFilter

    def get_queryset(self):
        return (
            RemoteSession.objects.filter(site__in=access.visible_sites(self.request.user))
            .select_related("site", "initiated_by", "ended_by", "psa_task", "asset")
            .order_by("-created_at")
        )

    @extend_schema(
        request=OpenSessionSerializer,
        responses={
            201: OpenedSerializer,
            403: refusal("Your role may not open sessions, the site's policy allows none, or a kill switch."),
            404: refusal("No such asset among the sites the caller may see."),
            409: refusal(
                "The asset's agent is offline or cannot carry the provider, or the asset is retired; "
                "meshcentral: MeshCentral does not record every session, has no device of the asset's name, "
                "could not start it, or it would wait for an approver."
            ),
        },
        description="201: the session, and the URL that joins it: the console page (``status`` awaiting_approval: "
        "a privileged session, or the site's policy wants an approver, who is not you); meshcentral: MeshCentral's "
        "web app on the device, signed in with a login token of this session only.",
    )
    def create(self, request, *args, **kwargs):
        given = OpenSessionSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        session, join_url = services.open_session(
            request.user,
            asset_id=data["asset"],
            session_type=data["session_type"],
            provider=data["provider"],
            psa_task_id=data.get("psa_task_id"),
            privileged=data["privileged"],
        )
        return Response(
            {"id": str(session.pk), "status": session.status, "join_url": join_url}, status=status.HTTP_201_CREATED
        )

    @extend_schema(
        request=None,
        responses={
            200: RemoteSessionSerializer,
            403: refusal("Only its technician or an admin may end a session."),
            409: refusal("The session has ended."),
        },
    )
    @action(detail=True, methods=["post"])
    def end(self, request, pk=None):
        session = services.end_session(request.user, self.get_object())
        return Response(self.get_serializer(self.get_queryset().get(pk=session.pk)).data)

    @extend_schema(request=None, responses={200: RemoteSessionSerializer, 409: DECISION_CONFLICT})
    @action(detail=True, methods=["post"])
    def approve(self, request, pk=None):
        session = self.get_object()
        services.approve(request.user, session)
        return Response(self.get_serializer(self.get_queryset().get(pk=session.pk)).data)

    @extend_schema(request=ReasonSerializer, responses={200: RemoteSessionSerializer, 409: DECISION_CONFLICT})
    @action(detail=True, methods=["post"])
    def reject(self, request, pk=None):
        session = self.get_object()
        services.reject(request.user, session, reason_of(request))
        return Response(self.get_serializer(self.get_queryset().get(pk=session.pk)).data)


class SessionPolicySerializer(serializers.ModelSerializer):
    site = serializers.CharField(source="site.name")
    author = serializers.CharField(source="author.username")
    decided_by = serializers.CharField(source="decided_by.username", allow_null=True, default=None)
    in_force = serializers.SerializerMethodField(help_text="This version rules the site's sessions now.")

    class Meta:
        model = SessionPolicy
        fields = [
            "id",
            "site",
            "version",
            "allowed",
            "approval_required",
            "max_duration_seconds",
            "idle_timeout_seconds",
            "in_force",
            "approval_status",
            "author",
            "created_at",
            "decided_by",
            "decided_at",
            "decision_reason",
        ]
        read_only_fields = fields

    def get_in_force(self, policy: SessionPolicy) -> bool:
        in_force = self.context.setdefault("in_force", {})  # one read per site of the page
        if policy.site_id not in in_force:
            in_force[policy.site_id] = policies.policy_for(policy.site).pk
        return policy.pk == in_force[policy.site_id]


class ProposePolicySerializer(serializers.Serializer):
    """Types only; the rules' bounds are the service's to check (400 on the field, with the reason)."""

    site = serializers.CharField(max_length=200, help_text="The site's name.")
    allowed = serializers.BooleanField(required=False, help_text="false: no session opens on the site's assets.")
    approval_required = serializers.BooleanField(required=False, help_text="Every session waits for an approver.")
    max_duration_seconds = serializers.IntegerField(
        required=False, help_text=f"1 to {services.MAX_DURATION_LIMIT}; a live session ends max_duration."
    )
    idle_timeout_seconds = serializers.IntegerField(
        required=False, help_text="1 to max_duration_seconds; a session idle this long ends idle."
    )


class SessionPolicyFilter(django_filters.FilterSet):
    site = django_filters.CharFilter(field_name="site__name", help_text="The site's name.")

    class Meta:
        model = SessionPolicy
        fields = ["site", "approval_status"]


class SessionPolicyViewSet(SiteScopedMixin, mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Versions of the session policies of the sites you may see; ``POST`` (admin) proposes the
    next version of a site's, which an approver who is not its author approves or rejects."""

    serializer_class = SessionPolicySerializer
    filterset_class = SessionPolicyFilter

    def get_queryset(self):
        return (
            SessionPolicy.objects.filter(site__in=access.visible_sites(self.request.user))
            .select_related("site", "author", "decided_by")
            .order_by("site__name", "-version")
        )

    @extend_schema(
        request=ProposePolicySerializer,
        responses={
            201: SessionPolicySerializer,
            403: refusal("Only an admin may propose a session policy."),
            404: refusal("No such site among the sites the caller may see (site)."),
            409: refusal("Another version of this site's policy was proposed at once."),
        },
        description="201: the next version, pending: it rules nothing until an approver who is not you "
        "approves it. Rules not given keep their value in the policy in force.",
    )
    def create(self, request, *args, **kwargs):
        given = ProposePolicySerializer(data=request.data)
        given.is_valid(raise_exception=True)
        policy = services.propose_policy(request.user, **given.validated_data)
        return Response(self.get_serializer(self.get_queryset().get(pk=policy.pk)).data, status=status.HTTP_201_CREATED)

    # The one approve/reject shape of every artefact kind, on the one approval service.
    approve, reject = decision_actions(SessionPolicySerializer)
