"""Admin plumbing shared by the apps: role-based access, read-only views, decisions with a reason."""

from django.contrib import admin, messages
from django.template.response import TemplateResponse

from rmm import access
from rmm.errors import ServiceError


class RoleAdmin(admin.ModelAdmin):
    """Access comes from the caller's role (``capability``), not from Django model permissions."""

    capability = "view"

    def has_module_permission(self, request):
        return access.can(request.user, self.capability) and request.user.is_staff

    def has_view_permission(self, request, obj=None):
        return self.has_module_permission(request)

    def has_change_permission(self, request, obj=None):
        return False

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyAdmin(RoleAdmin):
    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]


def run_decisions(modeladmin, request, queryset, decide, verb: str) -> None:
    """Apply ``decide(obj)`` to each selected object; every refusal is reported, none is skipped silently."""
    done = 0
    for obj in queryset:
        try:
            decide(obj)
            done += 1
        except ServiceError as exc:
            modeladmin.message_user(request, f"{obj}: {exc.detail}", messages.ERROR)
    if done:
        modeladmin.message_user(request, f"{verb} {done} item(s).", messages.SUCCESS)


def reject_with_reason(
    modeladmin, request, queryset, reject, verb: str = "Rejected", title: str = "Reject with a reason"
):
    """Ask for the reason first (an intermediate page), then apply ``reject(obj, user, reason)``."""
    reason = request.POST.get("reason", "").strip()
    if request.POST.get("confirm") and reason:
        run_decisions(modeladmin, request, queryset, lambda obj: reject(obj, request.user, reason), verb)
        return None
    if request.POST.get("confirm"):
        modeladmin.message_user(request, "A reason is required.", messages.ERROR)
    return TemplateResponse(
        request,
        "admin/rmm/reject_reason.html",
        {
            **modeladmin.admin_site.each_context(request),
            "title": title,
            "objects": queryset,
            "action": request.POST.get("action"),
            "opts": modeladmin.model._meta,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        },
    )
