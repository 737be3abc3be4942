from django.contrib import admin

from evidence.models import RmmEvidence
from rmm import access
from rmm.admin_base import ReadOnlyAdmin


@admin.register(RmmEvidence)
class EvidenceAdmin(ReadOnlyAdmin):
    capability = "view_evidence"
    list_display = ["evidence_type", "related_entity", "related_id", "asset", "hash", "captured_at"]
    list_filter = ["evidence_type"]

    def get_queryset(self, request):
        return super().get_queryset(request).filter(asset__site__in=access.visible_sites(request.user))
