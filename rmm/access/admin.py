from django.contrib import admin

from rmm.access import services
from rmm.access.admin_base import ReadOnlyAdmin, run_decisions
from rmm.access.models import ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    """The caller's own tokens (every token for an admin over every site), with their last use; the
    action revokes them through the service. Tokens are issued by ``rmm_token`` or on the console."""

    list_display = ["prefix", "user", "name", "privileged", "created_at", "expires_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]
    exclude = ["token_hash"]

    def get_queryset(self, request):
        return services.visible_tokens(request.user)

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields if f.name != "token_hash"]

    def has_change_permission(self, request, obj=None):
        return False

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset):
        run_decisions(
            self,
            request,
            queryset,
            lambda token: services.revoke_token(request.user, token.pk, "revoked in the admin"),
            "Revoked",
        )
