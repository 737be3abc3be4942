"""Containment jobs, read-only and within the caller's sites: the EDR asks through the API, a release
is decided in the approval queue like every job (docs/integrations.md#edr-containment)."""

from django.contrib import admin

from containment.models import ContainmentJob
from rmm.access import roles as access
from rmm.access.admin_base import ReadOnlyAdmin


@admin.register(ContainmentJob)
class ContainmentJobAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "action", "status", "containment", "site", "requested_by", "created_at"]
    list_filter = ["action", "status", "site"]
    search_fields = ["asset__hostname", "reason"]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .filter(site__in=access.visible_sites(request.user))
            .select_related("asset", "site", "requested_by", "psa_task")
        )

    @admin.display(description="asset's containment now")
    def containment(self, job: ContainmentJob) -> str:
        return job.asset.containment
