from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from evidence.api.views import EvidenceViewSet
from rmm.authority.api import views as authority_views
from rmm.engine import agent_views
from rmm.engine.api.views import KillSwitchViewSet
from rmm.inventory.api.views import AgentViewSet, AssetViewSet, SiteViewSet
from scripting.api.views import ScriptJobViewSet, ScriptViewSet

router = DefaultRouter()
router.register("sites", SiteViewSet, basename="site")
router.register("assets", AssetViewSet, basename="asset")
router.register("agents", AgentViewSet, basename="agent")
router.register("scripts", ScriptViewSet, basename="script")
router.register("script-jobs", ScriptJobViewSet, basename="script-job")
router.register("evidence", EvidenceViewSet, basename="evidence")
router.register("kill-switches", KillSwitchViewSet, basename="kill-switch")

urlpatterns = [
    path("api/v1/agent/enroll/", agent_views.enroll, name="agent-enroll"),
    path("api/v1/agent/heartbeat/", agent_views.heartbeat, name="agent-heartbeat"),
    path("api/v1/agent/results/", agent_views.result, name="agent-result"),
    path("api/v1/psa/cases/<uuid:case_id>/", authority_views.psa_case, name="psa-case"),
    path("api/v1/psa/tasks/<uuid:task_id>/", authority_views.psa_task, name="psa-task"),
    path("api/v1/", include(router.urls)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("console/scripts/", include("scripting.urls")),
    path("", include("rmm.console.urls")),
]
