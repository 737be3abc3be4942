"""SIEM destinations, read-only for the operator (made and removed through the API's services):
their cursor, state and last error."""

from django.contrib import admin

from rmm.access.admin_base import RoleAdmin
from rmm.siem.models import Destination


@admin.register(Destination)
class DestinationAdmin(RoleAdmin):
    list_display = ("name", "kind", "address", "format", "enabled", "cursor", "failures", "delivered_at")
    list_filter = ("kind", "format", "enabled")
    exclude = ("token", "ca_certificate")
    readonly_fields = [f.name for f in Destination._meta.fields if f.name not in ("token", "ca_certificate")] + [
        "sites"
    ]

    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_superuser

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
