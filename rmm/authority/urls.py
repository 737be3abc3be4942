from django.urls import path

from rmm.authority import console

app_name = "authority"
urlpatterns = [
    path("cases/", console.case_list, name="cases"),
    path("cases/<uuid:case_id>/", console.case_detail, name="case"),
    path("local/", console.local_authority, name="local"),
]
