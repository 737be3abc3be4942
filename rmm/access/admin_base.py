"""Admin plumbing shared by the apps: role-based access, read-only views, decisions with a reason."""

from django.contrib import admin, messages
from django.db import models
from django.template.response import TemplateResponse

from rmm.access import roles as access
from rmm.core.errors import ServiceError


def visible_related(admin_site, model, request):
    """The rows of ``model`` the caller may see: what its own admin lists (scoped to the caller's
    sites), nothing for a model without an admin."""
    related_admin = admin_site._registry.get(model)
    if related_admin is None:
        return model._default_manager.none()
    return related_admin.get_queryset(request)


class VisibleRelatedFilter(admin.RelatedFieldListFilter):
    """A list filter on a foreign key that offers only the related rows the caller may see: a
    filter on ``site`` lists the caller's sites, never every site's name and id."""

    def field_choices(self, field, request, model_admin):
        visible = visible_related(model_admin.admin_site, field.remote_field.model, request)
        ordering = self.field_admin_ordering(field, request, model_admin)
        return field.get_choices(
            include_blank=False, ordering=ordering, limit_choices_to={"pk__in": visible.values("pk")}
        )


class RoleAdmin(admin.ModelAdmin):
    """Access comes from the caller's role (``capability``), not from Django model permissions.

    Every list filter, form choice and autocomplete on a related model offers only what the
    caller may see (Law 7): the related model's own admin queryset, which is site-scoped."""

    capability = "view"

    def get_list_filter(self, request):
        scoped = []
        for entry in super().get_list_filter(request):
            if isinstance(entry, str):
                try:
                    field = self.model._meta.get_field(entry)
                except Exception:  # noqa: BLE001 - a lookup path; Django resolves it itself
                    field = None
                if isinstance(field, models.ForeignKey):
                    entry = (entry, VisibleRelatedFilter)
            scoped.append(entry)
        return scoped

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        kwargs.setdefault("queryset", visible_related(self.admin_site, db_field.remote_field.model, request))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        kwargs.setdefault("queryset", visible_related(self.admin_site, db_field.remote_field.model, request))
        return super().formfield_for_manytomany(db_field, request, **kwargs)

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


class DecisionAdmin(RoleAdmin):
    """An admin whose ``approve`` and ``reject`` actions are offered only to callers who may
    approve; the services decide again (four eyes, the caller's sites) for each object."""

    actions = ["approve", "reject"]

    def get_actions(self, request):
        actions = super().get_actions(request)
        if not access.can(request.user, "approve"):
            actions.pop("approve", None)
            actions.pop("reject", None)
        return actions


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
