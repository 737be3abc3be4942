"""SIEM destinations over the API (docs/integrations.md#the-siem-feed): make one, list, read (with
its delivery state and its lag behind the history), delete. The services act; views read and answer."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.response import Response

from rmm.core.api import SiteScopedMixin
from rmm.core.api_schema import refusal
from rmm.core.text import storable
from rmm.outbox import services as outbox
from rmm.siem import services
from rmm.siem.models import Destination, Format, Kind, Shape

NOT_ADMIN = refusal("Your role may not manage SIEM destinations (reads too).")
ALREADY = refusal("The destination is enabled (or disabled) already.")


class DestinationSerializer(serializers.ModelSerializer):
    """A destination as it is read: never its token."""

    sites = serializers.SerializerMethodField(help_text="The sites it hears; empty: every site, and events of none.")
    state = serializers.SerializerMethodField(help_text="`new`, `delivering`, `failing` or `disabled`.")
    position = serializers.IntegerField(source="cursor", help_text="The last history sequence delivered.")
    head = serializers.SerializerMethodField(help_text="The history's newest sequence.")
    lag = serializers.SerializerMethodField(help_text="History events after `position`.")
    lag_seconds = serializers.SerializerMethodField(help_text="The age of the oldest of them; 0 when caught up.")
    has_token = serializers.SerializerMethodField()
    shape = serializers.CharField(read_only=True, help_text="http: `splunk_hec` or `elastic_bulk`; syslog: empty.")

    class Meta:
        model = Destination
        fields = [
            "id",
            "name",
            "kind",
            "address",
            "format",
            "tls",
            "shape",
            "index",
            "has_token",
            "sites",
            "enabled",
            "created_at",
            "state",
            "position",
            "head",
            "lag",
            "lag_seconds",
            "delivered_at",
            "last_attempt_at",
            "next_attempt_at",
            "failures",
            "last_error",
        ]
        read_only_fields = fields

    def _lag(self, destination: Destination) -> services.Lag:
        """A page's lags come in its context (:func:`lag_context`); one destination's are read here."""
        if destination.pk not in self.context.get("lags", {}):
            self.context.update(lag_context([destination]))
        return self.context["lags"][destination.pk]

    def get_sites(self, destination: Destination) -> list[str]:
        return outbox.site_names(destination)

    def get_state(self, destination: Destination) -> str:
        return services.state(destination)

    def get_head(self, destination: Destination) -> int:
        self._lag(destination)
        return self.context["head"]

    def get_lag(self, destination: Destination) -> int:
        return self._lag(destination).events

    def get_lag_seconds(self, destination: Destination) -> float:
        return round(self._lag(destination).seconds, 3)

    def get_has_token(self, destination: Destination) -> bool:
        return bool(destination.token)


def lag_context(destinations: list[Destination]) -> dict:
    """The history's head and each destination's lag behind it, read for a whole page at once."""
    newest = services.head()
    return {"head": newest, "lags": services.lags(destinations, newest)}


def _text(**kwargs) -> serializers.CharField:
    return serializers.CharField(**kwargs)


class DestinationCreateSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=Kind.values, help_text="`syslog` (RFC 5424 over TCP) or `http`.")
    address = _text(max_length=2000, help_text="syslog: host:port; http: the collector's base URL.")
    format = serializers.ChoiceField(choices=Format.values, required=False, help_text="`json` (default) or `cef`.")
    tls = serializers.BooleanField(required=False, allow_null=True, help_text="syslog over TLS; http: https.")
    shape = serializers.ChoiceField(choices=Shape.values, required=False, help_text="http only.")
    token = _text(max_length=500, required=False, allow_blank=True, help_text="HEC token or Elastic API key.")
    index = _text(max_length=200, required=False, allow_blank=True, help_text="Splunk or Elastic index.")
    ca_certificate = _text(max_length=100_000, required=False, allow_blank=True, help_text="PEM CA for TLS.")
    sites = serializers.ListField(
        child=_text(max_length=100), max_length=1000, required=False, help_text="Site names; empty: every site."
    )
    name = _text(max_length=100, required=False, allow_blank=True, help_text="Default: generated.")
    from_start = serializers.BooleanField(
        required=False, help_text="Send the whole history first (default: new events)."
    )

    def validate(self, attrs):
        for field, value in attrs.items():
            values = value if isinstance(value, list) else [value]
            if any(isinstance(item, str) and not storable(item) for item in values):
                raise serializers.ValidationError({field: ["Contains a NUL or a lone surrogate."]})
        return attrs


class EnabledSerializer(serializers.Serializer):
    enabled = serializers.BooleanField(help_text="false pauses the feed (it keeps its position); true resumes it.")


class DestinationViewSet(SiteScopedMixin, viewsets.GenericViewSet):
    """SIEM destinations (admins, within their sites)."""

    serializer_class = DestinationSerializer
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self):
        return services.visible_destinations(self.request.user)

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        services.require_manager(request.user, self.action or "call")

    @extend_schema(responses={200: DestinationSerializer(many=True), 403: NOT_ADMIN})
    def list(self, request):
        page = self.paginate_queryset(self.get_queryset())
        data = DestinationSerializer(page, many=True, context=lag_context(page)).data
        return self.get_paginated_response(data)

    @extend_schema(responses={200: DestinationSerializer, 403: NOT_ADMIN})
    def retrieve(self, request, pk=None):
        return Response(DestinationSerializer(self.get_object()).data)

    @extend_schema(request=DestinationCreateSerializer, responses={201: DestinationSerializer, 403: NOT_ADMIN})
    def create(self, request):
        body = DestinationCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        destination = services.create_destination(request.user, **body.validated_data)
        destination = self.get_queryset().get(pk=destination.pk)
        return Response(DestinationSerializer(destination).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=EnabledSerializer, responses={200: DestinationSerializer, 409: ALREADY})
    def partial_update(self, request, pk=None):
        destination = self.get_object()
        body = EnabledSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        destination = services.set_enabled(request.user, destination, body.validated_data["enabled"])
        return Response(DestinationSerializer(self.get_queryset().get(pk=destination.pk)).data)

    @extend_schema(responses={204: None, 403: NOT_ADMIN})
    def destroy(self, request, pk=None):
        services.delete_destination(request.user, self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)
