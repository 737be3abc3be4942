"""The profiles app's API routes, included under /api/v1/ by rmm/urls.py (before its router)."""

from django.urls import include, path
from rest_framework.routers import SimpleRouter

from profiles.api import audits, enforcement

router = SimpleRouter()  # the API root stays rmm/urls.py's
# audits, observations and drift
router.register("audit-jobs", audits.AuditJobViewSet, basename="audit-job")
router.register("configuration-observations", audits.ObservationViewSet, basename="configuration-observation")
router.register("drift-events", audits.DriftEventViewSet, basename="drift-event")
router.register("enforcement-jobs", enforcement.EnforcementJobViewSet, basename="enforcement-job")

urlpatterns = [
    path("profile-assignments/<uuid:pk>/audit/", audits.AuditView.as_view(), name="profile-assignment-audit"),
    path("assets/<uuid:pk>/compliance/", audits.ComplianceView.as_view(), name="asset-compliance"),
    path("compliance-summary/", audits.ComplianceSummaryView.as_view(), name="compliance-summary"),
    path("", include(router.urls)),
]
