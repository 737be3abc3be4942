"""The Django admin's site, with one change: an autocomplete match is labelled by its model admin's
``autocomplete_label(obj)`` where it has one, not by ``str(obj)`` alone (an asset's hostname is
not unique: its label says its site, OS and a short id)."""

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.contrib.admin.views.autocomplete import AutocompleteJsonView


class LabelledAutocompleteJsonView(AutocompleteJsonView):
    def serialize_result(self, obj, to_field_name) -> dict:
        result = super().serialize_result(obj, to_field_name)
        label = getattr(self.model_admin, "autocomplete_label", None)
        return {**result, "text": label(obj)} if label else result


class RmmAdminSite(admin.AdminSite):
    def autocomplete_view(self, request):
        return LabelledAutocompleteJsonView.as_view(admin_site=self)(request)


class RmmAdminConfig(AdminConfig):
    """``django.contrib.admin`` with :class:`RmmAdminSite` as ``admin.site``."""

    default_site = "rmm.core.admin_site.RmmAdminSite"
