from django.contrib import admin
from django.db.models import Q

from evidence import exports, services
from evidence.models import EvidenceDisposal, EvidenceExport, LegalHold, RetentionRun, RmmEvidence
from rmm.access import roles as access
from rmm.access.admin_base import ReadOnlyAdmin


@admin.register(RmmEvidence)
class EvidenceAdmin(ReadOnlyAdmin):
    capability = "view_evidence"
    list_display = ["evidence_type", "related_entity", "related_id", "site", "asset", "hash", "captured_at"]
    list_filter = ["evidence_type"]
    search_fields = ["hash", "related_id"]

    def get_queryset(self, request):
        return services.visible_evidence(request.user).select_related("site", "asset")


@admin.register(EvidenceExport)
class EvidenceExportAdmin(ReadOnlyAdmin):
    """Exports are requested in the console or the API; here they can be looked at."""

    capability = "export_evidence"
    list_display = ["id", "requested_by", "status", "progress", "item_count", "requested_at", "finished_at"]
    list_filter = ["status"]

    def get_queryset(self, request):
        return exports.visible_exports(request.user)


@admin.register(LegalHold)
class LegalHoldAdmin(ReadOnlyAdmin):
    """Holds are placed and released through the API (recorded); the admin shows them."""

    capability = "view_evidence"
    list_display = ["__str__", "reason", "placed_by", "placed_at", "released_by", "released_at"]

    def get_queryset(self, request):
        return services.visible_holds(request.user)


@admin.register(RetentionRun)
class RetentionRunAdmin(ReadOnlyAdmin):
    capability = "export_evidence"
    list_display = ["started_at", "finished_at", "actor", "deleted_count", "held_count"]


@admin.register(EvidenceDisposal)
class EvidenceDisposalAdmin(ReadOnlyAdmin):
    capability = "view_evidence"
    list_display = ["evidence_type", "hash", "captured_at", "disposed_at", "retention_run"]
    list_filter = ["evidence_type"]

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        scope = Q(site_id__in=access.visible_sites(request.user).values("pk"))
        return qs.filter(scope)
