"""Deliveries and their attempts, read-only; a dead or delivered delivery can be replayed."""

from django.contrib import admin, messages

from rmm.access.admin_base import RoleAdmin
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


@admin.register(Endpoint)
class EndpointAdmin(OperatorAdmin):
    list_display = ("name", "url", "enabled", "created_at")
    readonly_fields = ("name", "url", "event_types", "enabled", "created_at")
    exclude = ("secret",)
