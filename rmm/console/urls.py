from django.urls import path
from django.views.generic import RedirectView

from rmm.console import (
    asset_page,
    asset_picker,
    dashboard,
    enroll_page,
    integrations,
    kill_switch_page,
    people,
    person_page,
    views,
)

app_name = "console"
urlpatterns = [
    path("", RedirectView.as_view(url="/console/", permanent=False)),
    path("console/", dashboard.dashboard, name="dashboard"),
    path("console/jobs/", views.job_list, name="jobs"),
    path("console/jobs/<str:kind>/<uuid:job_id>/", views.job_detail, name="job"),
    path("console/jobs/<str:kind>/<uuid:job_id>/fragment/", views.job_fragment, name="job-fragment"),
    path("console/batches/<uuid:batch_id>/", views.batch_detail, name="batch"),
    path("console/assets/", views.asset_list, name="assets"),
    path("console/assets/pick/", asset_picker.asset_pick, name="asset-pick"),
    path("console/assets/<uuid:asset_id>/", asset_page.asset_detail, name="asset"),
    path("console/assets/<uuid:asset_id>/retire/", asset_page.asset_retire, name="asset-retire"),
    path("console/agents/enroll/", enroll_page.enroll_page, name="enroll"),
    path("console/people/", people.people_page, name="people"),
    path("console/people/<int:person_id>/", person_page.person_page, name="person"),
    path("console/people/<int:person_id>/access/", person_page.person_access, name="person-access"),
    path("console/people/<int:person_id>/password/", person_page.person_password, name="person-password"),
    path(
        "console/people/<int:person_id>/second-factor/",
        person_page.person_button,
        {"action": "second-factor"},
        name="person-second-factor",
    ),
    path("console/people/<int:person_id>/deactivate/", person_page.person_deactivate, name="person-deactivate"),
    path(
        "console/people/<int:person_id>/reactivate/",
        person_page.person_button,
        {"action": "reactivate"},
        name="person-reactivate",
    ),
    path("console/kill-switches/", kill_switch_page.kill_switch_page, name="kill-switches"),
    path("console/tokens/", views.token_page, name="tokens"),
    path("console/tokens/<uuid:token_id>/revoke/", views.token_revoke, name="token-revoke"),
    path("console/webhooks/", integrations.webhook_list, name="webhooks"),
    path("console/webhooks/<uuid:webhook_id>/", integrations.webhook_detail, name="webhook"),
    path("console/webhooks/<uuid:webhook_id>/ping/", integrations.webhook_ping, name="webhook-ping"),
    path("console/webhooks/<uuid:webhook_id>/rotate-secret/", integrations.webhook_rotate, name="webhook-rotate"),
    path("console/webhook-deliveries/<uuid:delivery_id>/replay/", integrations.delivery_replay, name="delivery-replay"),
    path("console/siem/", integrations.siem_list, name="siem"),
    path("console/kill-switches/banner/", views.kill_banner, name="kill-banner"),
    path("console/kill-switches/<uuid:switch_id>/release/", views.kill_switch_release, name="kill-switch-release"),
]
