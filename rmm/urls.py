from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import DefaultRouter

from containment.api.views import ContainmentViewSet
from deployment.api.views import AssetSoftwareView, DeploymentJobViewSet, DeploymentViewSet, PackageViewSet
from evidence.api import views as evidence_views
from evidence.api.views import EvidenceExportViewSet, EvidenceViewSet, LegalHoldViewSet
from patching.api.findings import FindingViewSet
from patching.api.jobs import PatchJobViewSet, PatchScanViewSet
from patching.api.schedules import PatchScanScheduleViewSet
from patching.api.views import AssetPatchesView, PatchCatalogViewSet, PatchComplianceView
from patching.api.windows import MaintenanceWindowViewSet
from profiles.api.assignments import ProfileAssignmentViewSet
from profiles.api.views import ConfigKeyViewSet, ProfileViewSet
from rmm.access.api import ApiTokenViewSet
from rmm.authority.api import views as authority_views
from rmm.console import health
from rmm.console.approval_queue import approval_queue
from rmm.core.api_docs import ApiDocsView
from rmm.engine import agent_views
from rmm.engine.api.views import BatchViewSet, JobViewSet, KillSwitchViewSet
from rmm.inventory.api.views import AgentViewSet, AssetViewSet, SiteViewSet
from rmm.outbox.api import WebhookDeliveryViewSet, WebhookViewSet
from rmm.siem.api import DestinationViewSet
from rmm.updates import views as update_views
from scripting.api.views import ScriptJobViewSet, ScriptViewSet
from sessions.api.views import RemoteSessionViewSet, SessionPolicyViewSet

router = DefaultRouter()
router.register("sites", SiteViewSet, basename="site")
router.register("assets", AssetViewSet, basename="asset")
router.register("agents", AgentViewSet, basename="agent")
router.register("scripts", ScriptViewSet, basename="script")
router.register("script-jobs", ScriptJobViewSet, basename="script-job")
router.register("jobs", JobViewSet, basename="job")
router.register("config-keys", ConfigKeyViewSet, basename="config-key")
router.register("profiles", ProfileViewSet, basename="profile")
router.register("packages", PackageViewSet, basename="package")
router.register("deployments", DeploymentViewSet, basename="deployment")
router.register("deployment-jobs", DeploymentJobViewSet, basename="deployment-job")
router.register("patch-catalog", PatchCatalogViewSet, basename="patch-catalog")
router.register("patch-scans", PatchScanViewSet, basename="patch-scan")
router.register("patch-jobs", PatchJobViewSet, basename="patch-job")
router.register("patch-scan-schedules", PatchScanScheduleViewSet, basename="patch-scan-schedule")
router.register("maintenance-windows", MaintenanceWindowViewSet, basename="maintenance-window")
router.register("vulnerability-findings", FindingViewSet, basename="vulnerability-finding")
router.register("profile-assignments", ProfileAssignmentViewSet, basename="profile-assignment")
router.register("evidence/exports", EvidenceExportViewSet, basename="evidence-export")
router.register("evidence/legal-holds", LegalHoldViewSet, basename="legal-hold")
router.register("evidence", EvidenceViewSet, basename="evidence")
router.register("kill-switches", KillSwitchViewSet, basename="kill-switch")
router.register("batches", BatchViewSet, basename="batch")
router.register("tokens", ApiTokenViewSet, basename="api-token")
router.register("webhooks", WebhookViewSet, basename="webhook")
router.register("webhook-deliveries", WebhookDeliveryViewSet, basename="webhook-delivery")
router.register("containment", ContainmentViewSet, basename="containment")
router.register("siem-destinations", DestinationViewSet, basename="siem-destination")
router.register("remote-sessions", RemoteSessionViewSet, basename="remote-session")
router.register("session-policies", SessionPolicyViewSet, basename="session-policy")

handler500 = "rmm.core.dependencies.server_error"  # a dependency that is down answers 503, not 500
# A URL under /api/ that matches no route (a malformed id, say) answers the API's JSON 404.
handler404 = "rmm.core.api.not_found"

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("api/v1/agent/enroll/", agent_views.enroll, name="agent-enroll"),
    path("api/v1/agent/heartbeat/", agent_views.heartbeat, name="agent-heartbeat"),
    path("api/v1/agent/results/", agent_views.result, name="agent-result"),
    path("api/v1/agent/output/", agent_views.output, name="agent-output"),
    path("api/v1/agent/artefacts/<uuid:instruction_id>/<str:sha256>/", agent_views.artefact, name="agent-artefact"),
    path("api/v1/agent/releases/<str:sha256>/", update_views.release_download, name="agent-release"),
    path("api/v1/agent-updates/", update_views.AgentUpdateJobsView.as_view(), name="agent-update-jobs"),
    path("api/v1/psa/cases/<uuid:case_id>/", authority_views.psa_case, name="psa-case"),
    path("api/v1/psa/tasks/<uuid:task_id>/", authority_views.psa_task, name="psa-task"),
    path(
        "api/v1/psa/cases/<uuid:case_id>/evidence/",
        evidence_views.CaseEvidenceView.as_view(),
        name="psa-case-evidence",
    ),
    path("api/v1/evidence/signing-key/", evidence_views.signing_key, name="evidence-signing-key"),
    path("api/v1/assets/<uuid:asset_id>/patches/", AssetPatchesView.as_view(), name="asset-patches"),
    path("api/v1/patch-compliance/", PatchComplianceView.as_view(), name="patch-compliance"),
    path("api/v1/assets/<uuid:asset_id>/software/", AssetSoftwareView.as_view(), name="asset-software"),
    path("api/v1/", include("profiles.api.urls")),
    path("api/v1/", include(router.urls)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", ApiDocsView.as_view(url_name="schema"), name="api-docs"),
    path(
        "admin/approvals/",
        admin.site.admin_view(lambda request: approval_queue(request, admin.site)),
        name="approval-queue",
    ),
    path("admin/", admin.site.urls),
    path("accounts/otp/", include("rmm.signin.urls")),
    # Sign-in and sign-out only: no password reset (nothing sends mail; passwords are set by
    # `manage.py changepassword`), no self-service password change.
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("console/scripts/", include("scripting.urls")),
    path("console/compliance/", include("profiles.urls")),
    path("console/patching/", include("patching.urls")),
    path("console/evidence/", include("evidence.urls")),
    path("console/authority/", include("rmm.authority.urls")),
    path("console/sessions/", include("sessions.urls")),
    path("", include("rmm.console.urls")),
]
