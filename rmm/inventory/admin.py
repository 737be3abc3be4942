from django.contrib import admin

from rmm import access
from rmm.admin_base import ReadOnlyAdmin
from rmm.inventory.models import Agent, Asset, Site


@admin.register(Site)
class SiteAdmin(ReadOnlyAdmin):
    list_display = ["name", "created_at"]

    def get_queryset(self, request):
        return access.visible_sites(request.user)


@admin.register(Asset)
class AssetAdmin(ReadOnlyAdmin):
    list_display = ["hostname", "site", "os", "architecture", "created_at"]
    list_filter = ["site"]
    search_fields = ["hostname"]

    def get_queryset(self, request):
        return super().get_queryset(request).filter(site__in=access.visible_sites(request.user))


@admin.register(Agent)
class AgentAdmin(ReadOnlyAdmin):
    list_display = ["asset", "version", "last_seen_at", "revoked_at"]
    exclude = ["secret_hash"]

    def get_readonly_fields(self, request, obj=None):
        return [name for name in super().get_readonly_fields(request, obj) if name != "secret_hash"]

    def get_queryset(self, request):
        return super().get_queryset(request).filter(asset__site__in=access.visible_sites(request.user))
