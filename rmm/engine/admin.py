from django import forms
from django.contrib import admin
from django.db.models import Q

from rmm.access import roles as access
from rmm.access.admin_base import ReadOnlyAdmin, reject_with_reason
from rmm.core.errors import ServiceError
from rmm.engine.models import Instruction, KillSwitch, KillSwitchScope
from rmm.engine.services import kill_switches


class EngageForm(forms.ModelForm):
    target = forms.CharField(required=False, help_text="The site's name or the asset's id; empty for global.")

    class Meta:
        model = KillSwitch
        fields = ["scope", "target", "reason"]

    def __init__(self, *args, request=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.request = request

    def clean(self):
        data = super().clean()
        try:
            self.engaged = kill_switches.engage(
                self.request.user,
                scope=data.get("scope"),
                target=data.get("target") or None,
                reason=data.get("reason", ""),
            )
        except ServiceError as exc:
            raise forms.ValidationError(
                {exc.field or "__all__": exc.detail} if exc.field in self.fields else exc.detail
            ) from exc
        return data

    def _post_clean(self):
        """The service validated and created the switch; the unsaved instance is not checked again."""


@admin.register(KillSwitch)
class KillSwitchAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "scope", "reason", "engaged_by", "engaged_at", "released_by", "released_at"]
    list_filter = ["scope", "released_at"]
    actions = ["release"]

    def get_queryset(self, request):
        visible = Q(scope=KillSwitchScope.GLOBAL) | Q(site__in=access.visible_sites(request.user))
        return super().get_queryset(request).filter(visible).select_related("site", "asset")

    def has_add_permission(self, request):
        return request.user.is_staff and access.can(request.user, "engage_kill_switch")

    def get_form(self, request, obj=None, **kwargs):
        if obj is not None:
            return super().get_form(request, obj, **kwargs)
        form = EngageForm

        class BoundEngageForm(form):
            def __init__(self, *args, **kw):
                super().__init__(*args, request=request, **kw)

        return BoundEngageForm

    def get_fields(self, request, obj=None):
        return ["scope", "target", "reason"] if obj is None else super().get_fields(request, obj)

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else super().get_readonly_fields(request, obj)

    def save_model(self, request, obj, form, change):
        """The service already engaged it while validating the form; show that row."""
        obj.pk = form.engaged.pk

    def save_related(self, request, form, formsets, change):
        pass

    def log_addition(self, request, obj, message):
        pass  # the execution history records it

    @admin.action(description="Release selected kill switches (asks for a reason)")
    def release(self, request, queryset):
        return reject_with_reason(
            self,
            request,
            queryset,
            lambda switch, user, reason: kill_switches.release(user, switch, reason),
            "Released",
            "Release with a reason",
        )


@admin.register(Instruction)
class InstructionAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "status", "asset", "issued_at", "leased_at", "finished_at"]
    list_filter = ["status", "job_kind"]

    def get_queryset(self, request):
        return super().get_queryset(request).filter(site__in=access.visible_sites(request.user))
