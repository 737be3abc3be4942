from django.urls import path

from rmm.authority import views

app_name = "authority"
urlpatterns = [
    path("cases/", views.case_list, name="cases"),
    path("cases/<uuid:case_id>/", views.case_detail, name="case"),
    path("local/", views.local_authority, name="local"),
]
