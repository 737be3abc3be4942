"""The console's integrations pages (docs/integrations.md), for admins within their sites, as the
API: webhook subscriptions (make one and see its secret once, a test ping, rotate its secret with
an overlap, its deliveries with every attempt, replay one) and SIEM destinations with their
delivery state and lag. Every action is the outbox's or the feed's service; a role that may not
manage integrations gets 403 (recorded by the service), a webhook outside the admin's sites 404."""

from __future__ import annotations

from collections.abc import Callable

import django_filters
import django_tables2 as tables
from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from rmm.access import roles as access
from rmm.console import forms as console_forms
from rmm.console import lists
from rmm.core.errors import Forbidden, ServiceError
from rmm.outbox import services as outbox
from rmm.outbox.models import Delivery, Endpoint
from rmm.siem import services as siem
from rmm.siem.models import Destination, Format, Kind, Shape


def _manager(user, require, action: str, obj=None) -> None:
    """The service's own check (a refusal is recorded), as the console's 403 page."""
    try:
        require(user, action, obj)
    except Forbidden as exc:
        raise PermissionDenied(exc.detail) from None


def _sites_text(integration) -> str:
    return ", ".join(outbox.site_names(integration)) or "every site"


# --- webhooks -------------------------------------------------------------------------------------


class WebhookForm(forms.Form):
    url = forms.CharField(label="URL", max_length=2000, help_text="http(s); not this server, nor a link-local address.")
    event_types = forms.MultipleChoiceField(
        label="Event types",
        choices=[],
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": "Choose at least one event type."},
    )
    sites = forms.MultipleChoiceField(
        label="Sites",
        choices=[],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None chosen: every site, and events of none (needs every site).",
    )
    name = forms.CharField(label="Name", max_length=100, required=False, help_text="Left empty: generated.")

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        types = sorted(outbox.event_types().items())
        self.fields["event_types"].choices = [(outbox.EVERY_TYPE, f"{outbox.EVERY_TYPE} (every type)")] + [
            (name, f"{name}: {kind.description}") for name, kind in types
        ]
        self.fields["sites"].choices = [
            (name, name) for name in access.visible_sites(user).values_list("name", flat=True)
        ]


class WebhookTable(lists.ListTable):
    name = tables.TemplateColumn(
        "<a href=\"{% url 'console:webhook' record.pk %}\">{{ record.name }}</a>", verbose_name="Name"
    )
    url = tables.Column(verbose_name="URL")
    event_types = tables.Column(verbose_name="Event types", orderable=False)
    sites = tables.Column(verbose_name="Sites", empty_values=(), orderable=False)
    enabled = tables.BooleanColumn(verbose_name="Enabled", yesno="yes,no")
    created_at = tables.DateTimeColumn(verbose_name="Made", format="Y-m-d H:i")

    class Meta(lists.ListTable.Meta):
        order_by = "-created_at"
        row_attrs = {"data-webhook": lambda record: record.pk}
        empty_text = "No webhooks."

    def render_event_types(self, value) -> str:
        return ", ".join(value)

    def render_sites(self, record: Endpoint) -> str:
        return _sites_text(record)


class WebhookFilter(django_filters.FilterSet):
    enabled = django_filters.BooleanFilter(label="Enabled")

    class Meta:
        model = Endpoint
        fields = ["enabled"]


@login_required
@never_cache
def webhook_list(request):
    """The webhooks the admin may see, and a form that makes one: its secret is shown on the page
    that answers, this once."""
    _manager(request.user, outbox.require_manager, "list")
    form = WebhookForm(request.POST or None, user=request.user)
    context = {"nav": "integrations", "form": form, "secret": None}
    status = 200
    if request.method == "POST":
        made, status = console_forms.submit(
            form,
            lambda data: outbox.create_webhook(
                request.user, url=data["url"], event_types=data["event_types"], sites=data["sites"], name=data["name"]
            ),
        )
        if made is not None:
            endpoint, secret = made
            context.update(secret=secret, made=endpoint, form=WebhookForm(user=request.user))
    filterset = WebhookFilter(request.GET, queryset=outbox.visible_webhooks(request.user))
    return lists.list_page(request, WebhookTable, filterset, "console/webhooks.html", context, status=status)


def _visible(request, require, visible, pk, action: str):
    """The integration ``pk`` among those the admin may see, after the service's own check of the
    action (403, recorded); 404 outside the admin's sites."""
    _manager(request.user, require, action)
    found = visible(request.user).filter(pk=pk).first()
    if found is None:
        raise Http404
    return found


def _webhook(request, webhook_id, action: str) -> Endpoint:
    return _visible(request, outbox.require_manager, outbox.visible_webhooks, webhook_id, action)


class RotateForm(forms.Form):
    overlap_hours = forms.FloatField(
        label="Overlap (hours)",
        initial=24,
        help_text="How long the old secret still signs beside the new one; 0 stops it at once (a leaked secret).",
    )


class DeliveryTable(lists.ListTable):
    created_at = tables.DateTimeColumn(verbose_name="Made", format="Y-m-d H:i:s")
    event_id = tables.Column(verbose_name="Event id (webhook-id)", accessor="event__message_id", orderable=False)
    event_type = tables.Column(verbose_name="Type", accessor="event__type")
    status = tables.Column(verbose_name="Status")
    attempts = lists.CellColumn(
        template_name="console/delivery_attempts.html", verbose_name="Attempts", orderable=False, empty_values=()
    )
    replay = lists.CellColumn(
        template_name="console/delivery_replay.html", verbose_name="", orderable=False, empty_values=()
    )

    class Meta(lists.ListTable.Meta):
        order_by = "-created_at"
        row_attrs = {"data-delivery": lambda record: record.pk}
        empty_text = "No deliveries yet."

    def render_status(self, record) -> str:
        return record.status  # the API's word, not its label

    def prepare_page(self, records: list) -> None:
        """*Send again* where the service would send it again."""
        for record in records:
            record.replayable = outbox.replayable(record)


def _webhook_page(request, endpoint: Endpoint, *, secret: str = "", rotate: RotateForm | None = None, status=200):
    table = DeliveryTable(outbox.deliveries_of(endpoint))
    lists.paginate(request, table)
    context = {
        "nav": "integrations",
        "webhook": endpoint,
        "sites": outbox.site_names(endpoint),
        "table": table,
        "secret": secret,
        "rotate": rotate or RotateForm(),
    }
    return render(request, "console/webhook.html", context, status=status)


@login_required
@never_cache
def webhook_detail(request, webhook_id):
    """A webhook, its actions and its deliveries (newest first, each with every attempt)."""
    return _webhook_page(request, _webhook(request, webhook_id, "retrieve"))


def _acted(request, endpoint: Endpoint, act: Callable[[], Delivery], said: Callable[[Delivery], str]):
    """A button's action on a webhook: back to its page with what was done, or the page with the
    service's refusal and its status."""
    try:
        delivery = act()
    except ServiceError as exc:
        messages.error(request, exc.detail)
        return _webhook_page(request, endpoint, status=exc.status_code)
    messages.success(request, said(delivery))
    return redirect("console:webhook", webhook_id=endpoint.pk)


@login_required
@require_POST
def webhook_ping(request, webhook_id):
    endpoint = _webhook(request, webhook_id, "ping")
    return _acted(
        request,
        endpoint,
        lambda: outbox.ping(request.user, endpoint),
        lambda delivery: f"Test event {delivery.event.message_id} queued for {endpoint.name}.",
    )


@login_required
@require_POST
@never_cache
def webhook_rotate(request, webhook_id):
    """The new secret is on the page that answers, this once (no redirect: a reload must not show it)."""
    endpoint = _webhook(request, webhook_id, "rotate_secret")
    form = RotateForm(request.POST)
    made, status = console_forms.submit(
        form, lambda data: outbox.rotate_secret(request.user, endpoint, data["overlap_hours"])
    )
    if made is None:
        return _webhook_page(request, endpoint, rotate=form, status=status)
    endpoint, secret = made
    return _webhook_page(request, endpoint, secret=secret)


@login_required
@require_POST
def delivery_replay(request, delivery_id):
    _manager(request.user, outbox.require_manager, "replay")
    delivery = outbox.visible_deliveries(request.user).filter(pk=delivery_id).first()
    if delivery is None:
        raise Http404
    return _acted(
        request,
        delivery.endpoint,
        lambda: outbox.replay_delivery(request.user, delivery),
        lambda _: f"{delivery.event.message_id} is sent again, with the same id and body.",
    )


# --- SIEM destinations ----------------------------------------------------------------------------


class DestinationTable(lists.ListTable):
    name = tables.Column(verbose_name="Name")
    kind = tables.Column(verbose_name="Kind")
    address = tables.Column(verbose_name="Address")
    format = tables.Column(verbose_name="Format")
    sites = tables.Column(verbose_name="Sites", empty_values=(), orderable=False)
    state = lists.CellColumn(
        template_name="console/siem_state.html", verbose_name="State", orderable=False, empty_values=()
    )
    position = tables.Column(verbose_name="Position", accessor="cursor")
    lag = lists.CellColumn(template_name="console/siem_lag.html", verbose_name="Lag", orderable=False, empty_values=())
    delivered_at = tables.DateTimeColumn(verbose_name="Last delivered", format="Y-m-d H:i:s", default="never")
    actions = lists.CellColumn(
        template_name="console/siem_actions.html", verbose_name="", orderable=False, empty_values=()
    )

    class Meta(lists.ListTable.Meta):
        order_by = "-created_at"
        row_attrs = {"data-destination": lambda record: record.pk}
        empty_text = "No SIEM destinations."

    def render_sites(self, record: Destination) -> str:
        return _sites_text(record)

    def prepare_page(self, records: list) -> None:
        """Each destination's state and lag behind the history (at most three queries for the page)."""
        lags = siem.lags(records)
        for record in records:
            record.state = siem.state(record)
            record.lag = lags[record.pk]


class DestinationForm(forms.Form):
    kind = forms.ChoiceField(
        label="Kind", choices=Kind.choices, help_text="syslog: RFC 5424 over TCP; http: a collector."
    )
    address = forms.CharField(
        label="Address", max_length=2000, help_text="syslog: host:port; http: the collector's base URL."
    )
    format = forms.ChoiceField(label="Format", choices=Format.choices, initial=Format.JSON)
    tls = forms.BooleanField(label="TLS", required=False, help_text="syslog only; an https address is TLS.")
    shape = forms.ChoiceField(
        label="HTTP shape", choices=[("", "—"), *Shape.choices], required=False, help_text="http only."
    )
    token = forms.CharField(
        label="Token", max_length=500, required=False, help_text="http only: HEC token or Elastic API key."
    )
    index = forms.CharField(label="Index", max_length=200, required=False, help_text="http only.")
    ca_certificate = forms.CharField(
        label="CA certificate (PEM)",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Empty: the system's.",
    )
    sites = forms.MultipleChoiceField(
        label="Sites",
        choices=[],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None chosen: every site, and events of none (needs every site).",
    )
    name = forms.CharField(label="Name", max_length=100, required=False, help_text="Left empty: generated.")
    from_start = forms.BooleanField(label="Send the whole history", required=False, help_text="Else from now on.")

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["sites"].choices = [
            (name, name) for name in access.visible_sites(user).values_list("name", flat=True)
        ]


class DestinationFilter(django_filters.FilterSet):
    class Meta:
        model = Destination
        fields = ["kind", "enabled"]


@login_required
@never_cache
def siem_list(request, status: int = 200):
    """The SIEM destinations the admin may see, each with its delivery state and lag, to pause,
    resume or delete, and a form that makes one."""
    _manager(request.user, siem.require_manager, "list")
    creating = request.method == "POST" and request.resolver_match.url_name == "siem"
    form = DestinationForm(request.POST if creating else None, user=request.user)
    if creating:
        made, status = console_forms.submit(
            form,
            lambda data: siem.create_destination(
                request.user, **{**data, "tls": data["tls"] or None, "shape": data["shape"] or ""}
            ),
        )
        if made is not None:
            messages.success(request, f"{made.name} is made: the feed reaches it from position {made.cursor}.")
            return redirect("console:siem")
    filterset = DestinationFilter(request.GET, queryset=siem.visible_destinations(request.user))
    context = {"nav": "integrations", "form": form}
    return lists.list_page(request, DestinationTable, filterset, "console/siem.html", context, status=status)


def _destination(request, destination_id, action: str) -> Destination:
    return _visible(request, siem.require_manager, siem.visible_destinations, destination_id, action)


@login_required
@require_POST
def siem_pause(request, destination_id, resume: bool):
    """Pause a destination (it keeps its position) or resume it from there; a refusal shows on the
    list with its status."""
    destination = _destination(request, destination_id, "partial_update")
    try:
        siem.set_enabled(request.user, destination, resume)
    except ServiceError as exc:
        messages.error(request, exc.detail)
        return siem_list(request, status=exc.status_code)
    done = "resumed from" if resume else "paused at"
    messages.success(request, f"{destination.name} is {done} position {destination.cursor}.")
    return redirect("console:siem")


class DeleteForm(forms.Form):
    confirm = forms.BooleanField(
        label="Delete it: nothing more is sent to it",
        error_messages={"required": "Tick the box to confirm."},
    )


@login_required
@never_cache
def siem_delete(request, destination_id):
    """The confirmation (GET) and the deletion (POST): the history keeps that it existed."""
    destination = _destination(request, destination_id, "destroy")
    form = DeleteForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        siem.delete_destination(request.user, destination)
        messages.success(request, f"{destination.name} is deleted: nothing more is sent to it.")
        return redirect("console:siem")
    context = {"nav": "integrations", "destination": destination, "form": form}
    return render(request, "console/siem_delete.html", context, status=400 if form.is_bound else 200)
