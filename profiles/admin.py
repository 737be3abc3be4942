"""Key definitions and profiles, read-only: key versions are decided in the approval queue
(/admin/approvals/), profiles change through the API's services."""

from django.contrib import admin
from django.utils.html import format_html

from profiles import services
from profiles.models import ConfigKey, ConfigurationItem, ConfigurationProfile, ConfigurationProfileRevision
from rmm.access.admin_base import RoleAdmin
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
