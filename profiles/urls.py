from django.urls import path

from profiles import console

app_name = "profiles"
urlpatterns = [
    path("", console.fleet_compliance, name="compliance"),
    path("audits/", console.running_audits, name="audits"),
    path("assignments/<uuid:assignment_id>/audit/", console.audit_assignment, name="audit"),
]
