"""The Swagger UI of the OpenAPI schema (rmm/api_schema.py describes the API): for signed-in
callers, under the content security policy.

The UI is drf-spectacular's split view (its init script is a separate request, never inline) with
the assets of drf-spectacular-sidecar; our template replaces its inline ``<style>`` by a static file.
"""

from django.contrib.auth.views import redirect_to_login
from drf_spectacular.views import SpectacularSwaggerSplitView
from rest_framework import exceptions


class ApiDocsView(SpectacularSwaggerSplitView):
    template_name = "api/docs.html"

    def handle_exception(self, exc):
        # A browser without a session is sent to sign in rather than shown a bare 401.
        if isinstance(exc, exceptions.NotAuthenticated) and self.request.GET.get("script") is None:
            return redirect_to_login(self.request.get_full_path())
        return super().handle_exception(exc)
