"""Webhook subscriptions over the API (docs/integrations.md): create one (its secret is answered
once), list, read, change, disable, ping, rotate its secret, list its deliveries with every
attempt, replay a delivery. Every action is the services'; the views only read and answer."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from rmm.core.api import Pagination, SiteScopedMixin
from rmm.core.api_schema import refusal
from rmm.core.text import storable
from rmm.outbox import services
from rmm.outbox.models import Attempt, Delivery, Endpoint

DISABLED = refusal("The webhook is disabled (or the delivery is still being sent).")
NOT_ADMIN = refusal("Your role may not manage webhooks (reads too).")


class WebhookSerializer(serializers.ModelSerializer):
    """A subscription as it is read: never its secret."""

    sites = serializers.SerializerMethodField(help_text="The sites it hears; empty: every site, and events of none.")
    previous_secret_signs_until = serializers.DateTimeField(
        source="previous_secret_expires_at",
        allow_null=True,
        help_text="Until then the secret before the last rotation signs beside the current one.",
    )

    class Meta:
        model = Endpoint
        fields = ["id", "name", "url", "event_types", "sites", "enabled", "created_at", "previous_secret_signs_until"]
        read_only_fields = fields

    def get_sites(self, endpoint: Endpoint) -> list[str]:
        return services.site_names(endpoint)


class WebhookSecretSerializer(WebhookSerializer):
    """A subscription with its secret: answered once, when it is made or its secret rotated."""

    secret = serializers.SerializerMethodField(help_text="The Standard Webhooks secret (whsec_…); shown only now.")

    class Meta(WebhookSerializer.Meta):
        fields = [*WebhookSerializer.Meta.fields, "secret"]
        read_only_fields = fields

    def get_secret(self, endpoint: Endpoint) -> str:
        return self.context["secret"]


class WebhookChangeSerializer(serializers.Serializer):
    """What a PATCH may change; each field is checked as at creation."""

    url = serializers.CharField(max_length=2000, help_text="http(s); not this server, nor a link-local address.")
    event_types = serializers.ListField(
        child=serializers.CharField(max_length=100), max_length=100, help_text="Registered event types, or `*`."
    )
    sites = serializers.ListField(
        child=serializers.CharField(max_length=100), max_length=1000, help_text="Site names; empty: every site."
    )
    enabled = serializers.BooleanField()

    def validate(self, attrs):
        for field, value in attrs.items():
            values = value if isinstance(value, list) else [value]
            if any(isinstance(item, str) and not storable(item) for item in values):
                raise serializers.ValidationError({field: ["Contains a NUL or a lone surrogate."]})
        return attrs


class WebhookCreateSerializer(WebhookChangeSerializer):
    name = serializers.CharField(max_length=100, required=False, allow_blank=True, help_text="Default: generated.")
    sites = serializers.ListField(
        child=serializers.CharField(max_length=100),
        max_length=1000,
        required=False,
        help_text="Site names; omitted or empty: every site (needs access to every site).",
    )
    enabled = None


class RotateSerializer(serializers.Serializer):
    overlap_hours = serializers.FloatField(
        required=False,
        help_text="How long the old secret still signs beside the new one (default 24; 0: not at all).",
    )


class AttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = Attempt
        fields = ["number", "started_at", "status_code", "latency_ms", "error"]
        read_only_fields = fields


class DeliverySerializer(serializers.ModelSerializer):
    """A delivery of one event to one webhook, with every attempt."""

    webhook = serializers.UUIDField(source="endpoint_id")
    event_id = serializers.CharField(source="event.message_id", help_text="The `webhook-id` header.")
    event_type = serializers.CharField(source="event.type")
    attempt_count = serializers.IntegerField(source="attempts")
    attempts = AttemptSerializer(source="attempt_log", many=True)

    class Meta:
        model = Delivery
        fields = [
            "id",
            "webhook",
            "event_id",
            "event_type",
            "status",
            "attempt_count",
            "next_attempt_at",
            "last_status_code",
            "last_error",
            "delivered_at",
            "created_at",
            "attempts",
        ]
        read_only_fields = fields


class WebhookViewSet(SiteScopedMixin, viewsets.GenericViewSet):
    """Webhook subscriptions (admins, within their sites). DELETE disables one; it stays listed."""

    serializer_class = WebhookSerializer
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self):
        return services.visible_webhooks(self.request.user)

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        services.require_manager(request.user, self.action or "call")

    @extend_schema(responses={200: WebhookSerializer(many=True), 403: NOT_ADMIN})
    def list(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(WebhookSerializer(page, many=True).data)

    @extend_schema(responses={200: WebhookSerializer, 403: NOT_ADMIN})
    def retrieve(self, request, pk=None):
        return Response(WebhookSerializer(self.get_object()).data)

    @extend_schema(request=WebhookCreateSerializer, responses={201: WebhookSecretSerializer})
    def create(self, request):
        body = WebhookCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        endpoint, secret = services.create_webhook(request.user, **body.validated_data)
        answer = WebhookSecretSerializer(endpoint, context={"secret": secret}).data
        return Response(answer, status=status.HTTP_201_CREATED)

    @extend_schema(request=WebhookChangeSerializer, responses={200: WebhookSerializer})
    def partial_update(self, request, pk=None):
        endpoint = self.get_object()
        body = WebhookChangeSerializer(data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        endpoint = services.update_webhook(request.user, endpoint, **body.validated_data)
        return Response(WebhookSerializer(endpoint).data)

    @extend_schema(responses={204: None, 409: DISABLED})
    def destroy(self, request, pk=None):
        services.disable_webhook(request.user, self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses={202: DeliverySerializer, 409: DISABLED})
    @action(detail=True, methods=["post"])
    def ping(self, request, pk=None):
        """A `webhook.ping` event to this webhook alone; its delivery is answered (sent just after)."""
        delivery = services.ping(request.user, self.get_object())
        return Response(DeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=RotateSerializer, responses={200: WebhookSecretSerializer})
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request, pk=None):
        """A new secret, answered once; the old one signs beside it for `overlap_hours`."""
        endpoint = self.get_object()
        body = RotateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        endpoint, secret = services.rotate_secret(request.user, endpoint, body.validated_data.get("overlap_hours"))
        return Response(WebhookSecretSerializer(endpoint, context={"secret": secret}).data)

    @extend_schema(responses={200: DeliverySerializer(many=True), 403: NOT_ADMIN})
    @action(detail=True, methods=["get"])
    def deliveries(self, request, pk=None):
        """Every delivery to this webhook, newest first, each with every attempt."""
        endpoint = self.get_object()
        rows = services.deliveries_of(endpoint)
        paginator = Pagination()
        page = paginator.paginate_queryset(rows, request, view=self)
        return paginator.get_paginated_response(DeliverySerializer(page, many=True).data)


class WebhookDeliveryViewSet(SiteScopedMixin, viewsets.GenericViewSet):
    """A delivery of a webhook the caller may see: replay it."""

    serializer_class = DeliverySerializer

    def get_queryset(self):
        return services.visible_deliveries(self.request.user)

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        services.require_manager(request.user, self.action or "call")

    @extend_schema(
        request=inline_serializer("ReplayBody", {}),
        responses={200: DeliverySerializer, 409: DISABLED},
    )
    @action(detail=True, methods=["post"])
    def replay(self, request, pk=None):
        """Send a dead or delivered delivery again: the same `webhook-id`, the same body."""
        delivery = services.replay_delivery(request.user, self.get_object())
        return Response(DeliverySerializer(services.deliveries_of(delivery.endpoint).get(pk=delivery.pk)).data)
