from django.urls import path

from patching import console

app_name = "patching"
urlpatterns = [
    path("compliance/", console.compliance_page, name="compliance"),
    path("jobs/<uuid:patch_job_id>/", console.rollout_page, name="rollout"),
]
