"""Key definitions and profiles, read-only: key versions are decided in the approval queue
(/admin/approvals/), profiles change through the API's services. Assignments of the caller's sites,
awaiting approval first, decided with the same services as the API (not an artefact kind: see
profiles/assignments.py)."""

from django.contrib import admin
from django.db.models import Case, Q, Value, When
from django.utils.html import format_html

from profiles import assignments, services
from profiles.models import (
    AssetConfigurationProfile,
    AssignmentStatus,
    ConfigKey,
    ConfigurationItem,
    ConfigurationProfile,
    ConfigurationProfileRevision,
)
from rmm.access import roles as access
from rmm.access.admin_base import DecisionAdmin, RoleAdmin, reject_with_reason, run_decisions
from rmm.artefacts.models import DECISION_FIELDS


@admin.register(ConfigKey)
class ConfigKeyAdmin(RoleAdmin):
    list_display = ["name", "version", "platform", "value_type", "approval_status", "author", "created_at"]
    list_filter = ["approval_status", "platform", "value_type"]
    search_fields = ["name", "content_sha256"]
    readonly_fields = [
        "name",
        "version",
        "description",
        "platform",
        "value_type",
        "comparisons",
        "parameters",
        "read_script",
        "set_script",
        "content_sha256",
        *DECISION_FIELDS,
        "content_block",
    ]
    fields = readonly_fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("author", "read_script", "set_script", "decided_by")

    @admin.display(description="definition and scripts")
    def content_block(self, obj):
        return format_html("<pre>{}</pre>", services.key_content(obj))


class ItemInline(admin.TabularInline):
    model = ConfigurationItem
    fields = ["position", "config_key", "parameters", "comparison", "desired_value", "enforcement_mode"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_view_permission(self, request, obj=None):
        return True  # the revision's own admin decided who sees it

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(ConfigurationProfileRevision)
class ConfigurationProfileRevisionAdmin(RoleAdmin):
    list_display = ["profile", "revision", "created_by", "created_at"]
    list_select_related = ["profile", "created_by"]
    readonly_fields = ["profile", "revision", "created_by", "created_at"]
    fields = readonly_fields
    inlines = [ItemInline]


@admin.register(ConfigurationProfile)
class ConfigurationProfileAdmin(RoleAdmin):
    list_display = ["name", "profile_type", "current_revision", "created_by", "created_at"]
    list_select_related = ["created_by", "current_revision__profile"]
    list_filter = ["profile_type"]
    search_fields = ["name"]
    readonly_fields = ["name", "profile_type", "description", "current_revision", "created_by", "created_at"]
    fields = readonly_fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("created_by", "current_revision")


@admin.register(AssetConfigurationProfile)
class AssetConfigurationProfileAdmin(DecisionAdmin):
    list_display = ["profile", "asset", "site", "status", "approved_revision", "requested_by", "created_at"]
    list_filter = ["status"]
    search_fields = ["profile__name", "asset__hostname", "site__name"]
    readonly_fields = [
        "profile",
        "asset",
        "site",
        "psa_task",
        "status",
        "status_reason",
        "approved_revision",
        "audit_interval_seconds",
        "requested_by",
        "decided_by",
        "decided_at",
        "created_at",
        "updated_at",
    ]
    fields = readonly_fields

    def get_queryset(self, request):
        sites = access.visible_sites(request.user)
        waiting_first = Case(When(status=AssignmentStatus.AWAITING_APPROVAL, then=Value(0)), default=Value(1))
        return (
            super()
            .get_queryset(request)
            .filter(Q(site__in=sites) | Q(asset__site__in=sites))
            .select_related("profile", "asset", "site", "psa_task", "approved_revision__profile", "requested_by")
            .order_by(waiting_first, "-created_at")
        )

    @admin.action(description="Approve selected assignments (the profile's current revision)")
    def approve(self, request, queryset):
        run_decisions(self, request, queryset, lambda a: assignments.approve_assignment(a, request.user), "Approved")

    @admin.action(description="Reject selected assignments (asks for a reason)")
    def reject(self, request, queryset):
        return reject_with_reason(self, request, queryset, assignments.reject_assignment)
