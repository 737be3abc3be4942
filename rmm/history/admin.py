from django.contrib import admin

from rmm.access import roles as access
from rmm.access.admin_base import ReadOnlyAdmin
from rmm.history.models import HistoryEvent


@admin.register(HistoryEvent)
class HistoryEventAdmin(ReadOnlyAdmin):
    capability = "approve"
    list_display = ["sequence", "created_at", "actor", "action", "subject_type", "subject_id"]
    list_filter = ["action"]
    search_fields = ["actor", "subject_id", "action"]

    def get_queryset(self, request):
        """Events of the caller's sites; site-less events (grants, global switches) only for all-site holders."""
        qs = super().get_queryset(request)
        if access.sees_all_sites(request.user):
            return qs
        return qs.filter(site_id__in=access.visible_sites(request.user).values("pk"))
