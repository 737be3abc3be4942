"""The approval queue: pending script versions and pending script jobs, approve or reject with a reason."""

from django.contrib import admin
from django.utils.html import format_html

from rmm.access import roles as access
from rmm.access.admin_base import DecisionAdmin, reject_with_reason, run_decisions
from rmm.artefacts.models import DECISION_FIELDS
from scripting import services
from scripting.models import Script, ScriptJob


@admin.register(Script)
class ScriptAdmin(DecisionAdmin):
    capability = "view"
    list_display = [
        "name",
        "version",
        "language",
        "approval_status",
        "privileged",
        "requires_approval",
        "author",
        "created_at",
    ]
    list_filter = ["approval_status", "language", "privileged", "requires_approval"]
    search_fields = ["name", "sha256"]
    readonly_fields = [
        "name",
        "version",
        "language",
        "sha256",
        "privileged",
        "requires_approval",
        "timeout_seconds",
        *DECISION_FIELDS,
        "content_block",
    ]
    fields = readonly_fields

    @admin.display(description="content")
    def content_block(self, obj):
        return format_html("<pre>{}</pre>", obj.content)

    @admin.action(description="Approve selected script versions")
    def approve(self, request, queryset):
        run_decisions(self, request, queryset, lambda s: services.approve_script(s, request.user), "Approved")

    @admin.action(description="Reject selected script versions (asks for a reason)")
    def reject(self, request, queryset):
        return reject_with_reason(self, request, queryset, services.reject_script)


@admin.register(ScriptJob)
class ScriptJobAdmin(DecisionAdmin):
    capability = "view"
    list_display = ["__str__", "status", "site", "requested_by", "created_at", "decided_by"]
    list_filter = ["status", "site"]
    readonly_fields = [
        "script",
        "asset",
        "site",
        "psa_task",
        "status",
        "status_reason",
        "requested_by",
        "created_at",
        "decided_by",
        "decided_at",
        "started_at",
        "completed_at",
    ]
    fields = readonly_fields

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .filter(site__in=access.visible_sites(request.user))
            .select_related("script", "asset", "site", "requested_by", "decided_by")
        )

    @admin.action(description="Approve selected jobs")
    def approve(self, request, queryset):
        run_decisions(self, request, queryset, lambda j: services.approve_script_job(j, request.user), "Approved")

    @admin.action(description="Reject selected jobs (asks for a reason)")
    def reject(self, request, queryset):
        return reject_with_reason(self, request, queryset, services.reject_script_job)
