from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from rmm.access import roles as access
from rmm.access import services
from rmm.access.admin_base import ReadOnlyAdmin, run_decisions
from rmm.history import services as history
from rmm.inventory import services as inventory
from rmm.inventory.models import Agent, Asset, EnrollmentToken, Site


class GrantForm(forms.Form):
    username = forms.CharField()
    action = forms.ChoiceField(choices=[("grant", "Grant this site"), ("revoke", "Revoke this site")])


@admin.register(Site)
class SiteAdmin(ReadOnlyAdmin):
    """Sites, with a page per site to grant and revoke access (every change is in the history)."""

    list_display = ["name", "created_at", "access_link"]
    change_form_template = "admin/inventory/site/change_form.html"

    def get_queryset(self, request):
        return access.visible_sites(request.user)

    @admin.display(description="access")
    def access_link(self, obj):
        return format_html('<a href="{}">grants</a>', reverse("admin:inventory_site_access", args=[obj.pk]))

    def get_urls(self):
        extra = [
            path(
                "<uuid:site_id>/access/",
                self.admin_site.admin_view(self.access_view),
                name="inventory_site_access",
            )
        ]
        return extra + super().get_urls()

    def access_view(self, request, site_id):
        site = self.get_queryset(request).filter(pk=site_id).first()
        if site is None:
            raise Http404
        may_manage = access.can(request.user, "manage_access")
        form = GrantForm(request.POST or None)
        if request.method == "POST":
            if not may_manage:
                history.record_refusal(
                    request.user, "access.change", site, reason="role may not manage access", site_id=site.pk
                )
                raise PermissionDenied
            if form.is_valid():
                user = get_user_model().objects.filter(username=form.cleaned_data["username"]).first()
                if user is None:
                    form.add_error("username", "No such user.")
                else:
                    change = services.grant_site if form.cleaned_data["action"] == "grant" else services.revoke_site
                    change(user, site, actor=request.user)
                    messages.success(request, f"{form.cleaned_data['action'].title()}ed {site} for {user}.")
                    return redirect("admin:inventory_site_access", site_id=site.pk)
        return TemplateResponse(
            request,
            "admin/inventory/site/access.html",
            {
                **self.admin_site.each_context(request),
                "title": f"Access to {site}",
                "site_obj": site,
                "grantees": services.site_grantees(site),
                "form": form,
                "may_manage": may_manage,
                "opts": self.model._meta,
            },
        )


@admin.register(Asset)
class AssetAdmin(ReadOnlyAdmin):
    list_display = ["hostname", "site", "os", "architecture", "created_at"]
    list_filter = ["site"]
    # A hostname prefix, in any case: the index the console's asset picker uses serves it.
    search_fields = ["^hostname"]

    def get_queryset(self, request):
        return super().get_queryset(request).filter(site__in=access.visible_sites(request.user)).select_related("site")

    def get_search_results(self, request, queryset, search_term):
        """An autocomplete (the kill switch's asset) never offers a retired asset."""
        found, duplicates = super().get_search_results(request, queryset, search_term)
        if request.path == reverse(f"{self.admin_site.name}:autocomplete"):
            found = found.filter(retired_at__isnull=True)
        return found, duplicates

    def autocomplete_label(self, asset: Asset) -> str:
        return asset_label(asset)


def asset_label(asset: Asset) -> str:
    """An asset as a choice names it beyond its hostname, which is not unique."""
    return f"{asset.hostname} · {asset.site.name} · {asset.os or 'OS not reported'} · {str(asset.pk)[:8]}"


@admin.register(Agent)
class AgentAdmin(ReadOnlyAdmin):
    list_display = ["asset", "version", "last_seen_at", "offline_since", "revoked_at"]
    exclude = ["secret_hash"]

    def get_readonly_fields(self, request, obj=None):
        return [name for name in super().get_readonly_fields(request, obj) if name != "secret_hash"]

    def get_queryset(self, request):
        return super().get_queryset(request).filter(asset__site__in=access.visible_sites(request.user))


@admin.register(EnrollmentToken)
class EnrollmentTokenAdmin(ReadOnlyAdmin):
    """The enrollment tokens of the caller's sites; the action revokes them through the service
    (admins only). Tokens are issued by ``rmm_enrollment_token``; only their hash is kept."""

    list_display = [
        "short_id",
        "site",
        "created_at",
        "expires_at",
        "use_count",
        "max_uses",
        "created_by",
        "revoked_at",
        "revoked_by",
    ]
    list_filter = ["site"]
    actions = ["revoke"]
    exclude = ["token_hash"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("site").filter(site__in=access.visible_sites(request.user))

    def get_readonly_fields(self, request, obj=None):
        return [name for name in super().get_readonly_fields(request, obj) if name != "token_hash"]

    @admin.display(description="id")
    def short_id(self, obj):
        return str(obj.pk)[:8]

    def has_revoke_permission(self, request):
        return access.can(request.user, "manage_agents")

    @admin.action(description="Revoke selected enrollment tokens", permissions=["revoke"])
    def revoke(self, request, queryset):
        run_decisions(
            self,
            request,
            queryset,
            lambda token: inventory.revoke_enrollment_token(token, by=request.user, reason="revoked in the admin"),
            "Revoked",
        )
