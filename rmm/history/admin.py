from django.contrib import admin

from rmm.admin_base import ReadOnlyAdmin
from rmm.history.models import HistoryEvent


@admin.register(HistoryEvent)
class HistoryEventAdmin(ReadOnlyAdmin):
    capability = "approve"
    list_display = ["sequence", "created_at", "actor", "action", "subject_type", "subject_id"]
    list_filter = ["action"]
    search_fields = ["actor", "subject_id", "action"]
