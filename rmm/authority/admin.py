from django.contrib import admin

from rmm.access import roles as access
from rmm.access.admin_base import ReadOnlyAdmin
from rmm.authority.models import PsaCase, PsaTask


@admin.register(PsaCase)
class PsaCaseAdmin(ReadOnlyAdmin):
    list_display = ["title", "status", "site", "updated_at"]
    list_filter = ["status", "site"]

    def get_queryset(self, request):
        return super().get_queryset(request).filter(site__in=access.visible_sites(request.user))


@admin.register(PsaTask)
class PsaTaskAdmin(ReadOnlyAdmin):
    list_display = ["title", "status", "case", "updated_at"]
    list_filter = ["status"]

    def get_queryset(self, request):
        return super().get_queryset(request).filter(case__site__in=access.visible_sites(request.user))
