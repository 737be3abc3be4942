"""Webhook subscriptions (made, changed, pinged, rotated and disabled through the services; the secret
is never displayed but once, when it is made), and deliveries with their attempts, read-only; a dead
or delivered delivery can be replayed."""

from django import forms
from django.contrib import admin, messages

from rmm.access.admin_base import RoleAdmin, run_decisions
from rmm.core.errors import ServiceError
from rmm.outbox import services
from rmm.outbox.models import Attempt, Delivery, Endpoint


class AttemptInline(admin.TabularInline):
    model = Attempt
    fields = ("number", "started_at", "status_code", "latency_ms", "error")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


class OperatorAdmin(RoleAdmin):
    """Deliveries span every site: the operator's (superuser's) page."""

    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_superuser


@admin.register(Delivery)
class DeliveryAdmin(OperatorAdmin):
    list_display = ("event", "endpoint", "status", "attempts", "last_status_code", "next_attempt_at", "delivered_at")
    list_filter = ("status", "event__type")
    search_fields = ("event__subject_id",)
    readonly_fields = (
        "event",
        "endpoint",
        "status",
        "attempts",
        "replayed_after",
        "next_attempt_at",
        "last_status_code",
        "last_error",
        "delivered_at",
        "created_at",
    )
    inlines = [AttemptInline]
    actions = ["replay"]

    @admin.action(description="Send again (same id, same body)")
    def replay(self, request, queryset):
        done = 0
        for delivery in queryset:
            try:
                services.replay(delivery, request.user)
                done += 1
            except services.OutboxError as exc:
                self.message_user(request, f"{delivery}: {exc}", messages.ERROR)
        if done:
            self.message_user(request, f"{done} deliveries queued again.")


class WebhookForm(forms.ModelForm):
    """A webhook subscription, made or changed by the services while the form validates; their
    refusal (a URL this server may not reach, an unknown event type) is the form's."""

    url = forms.CharField(max_length=2000, help_text="http(s); not this server, nor a link-local address.")
    event_types = forms.CharField(help_text="Registered event types, separated by commas; * for every type.")

    class Meta:
        model = Endpoint
        fields = ["name", "url", "event_types", "sites", "enabled"]
        help_texts = {"name": "Left empty: generated.", "sites": "None chosen: every site, and events of none."}

    def __init__(self, *args, request=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.request = request
        if "name" in self.fields:
            self.fields["name"].required = False
        if not self.instance._state.adding:
            self.initial["event_types"] = ", ".join(self.instance.event_types)

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        changes = {
            "url": data["url"],
            "event_types": [name.strip() for name in data["event_types"].split(",") if name.strip()],
            "sites": [site.name for site in data.get("sites") or []],
        }
        try:
            if not self.instance._state.adding:
                self.saved = services.update_webhook(
                    self.request.user, self.instance, enabled=data.get("enabled", True), **changes
                )
            else:
                self.saved, self.secret = services.create_webhook(
                    self.request.user, name=data.get("name", ""), **changes
                )
        except ServiceError as exc:
            raise forms.ValidationError({exc.field: exc.detail} if exc.field in self.fields else exc.detail) from exc
        return data

    def _post_clean(self):
        """The services validated and saved it; the instance is not checked again."""


@admin.register(Endpoint)
class EndpointAdmin(OperatorAdmin):
    """Webhook subscriptions and the PSA's endpoint (which the settings keep; read-only here). The
    secret is never displayed: a new one is shown once, when the webhook is made or rotated."""

    list_display = ("name", "url", "enabled", "site_names", "created_at")
    list_filter = ("enabled",)
    actions = ["ping", "rotate_secret", "disable"]

    def has_add_permission(self, request):
        return self.has_module_permission(request)

    def has_change_permission(self, request, obj=None):
        return self.has_module_permission(request) and (obj is None or obj.name != services.PSA_ENDPOINT)

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("sites")

    @admin.display(description="sites")
    def site_names(self, endpoint: Endpoint) -> str:
        return ", ".join(services.site_names(endpoint)) or "every site"

    def get_form(self, request, obj=None, **kwargs):
        if obj is not None and obj.name == services.PSA_ENDPOINT:
            return super().get_form(request, obj, **kwargs)
        form = super().get_form(request, obj, form=WebhookForm, **kwargs)

        class BoundWebhookForm(form):
            def __init__(self, *args, **kw):
                super().__init__(*args, request=request, **kw)

        return BoundWebhookForm

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["name", "url", "event_types", "sites"]
        return ["url", "event_types", "sites", "enabled"]

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and obj.name == services.PSA_ENDPOINT:
            return ["url", "event_types", "sites", "enabled"]
        return []

    def save_model(self, request, obj, form, change):
        """The services already saved it while validating the form; show that row."""
        obj.pk = form.saved.pk
        if not change:
            self.message_user(request, f"The webhook's secret, shown this once: {form.secret}", messages.WARNING)

    def save_related(self, request, form, formsets, change):
        pass

    def log_addition(self, request, obj, message):
        pass  # the execution history records it

    def log_change(self, request, obj, message):
        pass

    @admin.action(description="Send a test event (webhook.ping)")
    def ping(self, request, queryset):
        run_decisions(self, request, queryset, lambda endpoint: services.ping(request.user, endpoint), "Pinged")

    @admin.action(description="Rotate the secret (the old one signs for the default overlap)")
    def rotate_secret(self, request, queryset):
        for endpoint in queryset.exclude(name=services.PSA_ENDPOINT):
            try:
                _, secret = services.rotate_secret(request.user, endpoint)
            except ServiceError as exc:
                self.message_user(request, f"{endpoint}: {exc.detail}", messages.ERROR)
                continue
            self.message_user(request, f"{endpoint}: the new secret, shown this once: {secret}", messages.WARNING)

    @admin.action(description="Disable")
    def disable(self, request, queryset):
        disabled = queryset.exclude(name=services.PSA_ENDPOINT)
        run_decisions(
            self, request, disabled, lambda endpoint: services.disable_webhook(request.user, endpoint), "Disabled"
        )
