from django import forms
from django.contrib import admin
from django.db.models import Q

from rmm.access import roles as access
from rmm.access.admin_base import ReadOnlyAdmin, reject_with_reason
from rmm.console.kill_switch_page import check_scope, target_of
from rmm.core.errors import ServiceError
from rmm.engine.models import Instruction, KillSwitch, KillSwitchScope
from rmm.engine.services import kill_switches
from rmm.inventory.admin import asset_label


class AssetChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj) -> str:
        return asset_label(obj)


class EngageForm(forms.ModelForm):
    """The scope and then its site or its asset (found by autocomplete), nothing chosen
    beforehand; the service engages it while the form validates, and its refusal is the form's."""

    class Meta:
        model = KillSwitch
        fields = ["scope", "site", "asset", "reason"]
        help_texts = {
            "site": "For a site's kill switch.",
            "asset": "For an asset's kill switch: type the start of its hostname.",
        }

    def __init__(self, *args, request=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.request = request

    def clean(self):
        data = super().clean()
        check_scope(self, data)
        if self.errors:
            return data
        try:
            self.engaged = kill_switches.engage(
                self.request.user, scope=data["scope"], target=target_of(data), reason=data.get("reason", "")
            )
        except ServiceError as exc:
            field = data["scope"] if exc.field == "target" else exc.field  # the site's or the asset's
            raise forms.ValidationError({field: exc.detail} if field in self.fields else exc.detail) from exc
        return data

    def _post_clean(self):
        """The service validated and created the switch; the unsaved instance is not checked again."""


@admin.register(KillSwitch)
class KillSwitchAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "scope", "reason", "engaged_by", "engaged_at", "released_by", "released_at"]
    list_filter = ["scope", "released_at"]
    autocomplete_fields = ["asset"]  # a fleet's assets are too many for a drop-down
    actions = ["release"]

    def get_queryset(self, request):
        visible = Q(scope=KillSwitchScope.GLOBAL) | Q(site__in=access.visible_sites(request.user))
        return super().get_queryset(request).filter(visible).select_related("site", "asset")

    def has_add_permission(self, request):
        return request.user.is_staff and access.can(request.user, "engage_kill_switch")

    def get_form(self, request, obj=None, **kwargs):
        if obj is not None:
            return super().get_form(request, obj, **kwargs)
        form = super().get_form(request, obj, form=EngageForm, **kwargs)

        class BoundEngageForm(form):
            def __init__(self, *args, **kw):
                super().__init__(*args, request=request, **kw)

        return BoundEngageForm

    def get_fields(self, request, obj=None):
        return EngageForm._meta.fields if obj is None else super().get_fields(request, obj)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "asset":
            kwargs["form_class"] = AssetChoiceField  # more than the bare hostname
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

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
