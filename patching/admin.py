"""The patch catalog, read-only: it changes only by importing advisories (docs/patching.md)."""

from django.contrib import admin

from patching.models import PatchCatalog
from rmm.access.admin_base import RoleAdmin


@admin.register(PatchCatalog)
class PatchCatalogAdmin(RoleAdmin):
    list_display = ["vendor", "product", "patch_id", "severity", "release_date", "source", "source_advisory_id"]
    list_filter = ["severity", "source", "vendor"]
    search_fields = ["product", "patch_id", "source_advisory_id", "=cves__cve"]
    readonly_fields = [
        "vendor",
        "product",
        "patch_id",
        "fixed_version",
        "severity",
        "cve_list",
        "release_date",
        "title",
        "url",
        "source",
        "source_advisory_id",
        "imported_at",
    ]
    fields = readonly_fields

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("cves")

    @admin.display(description="CVEs")
    def cve_list(self, obj) -> str:
        return ", ".join(sorted(link.cve for link in obj.cves.all()))
