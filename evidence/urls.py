from django.urls import path

from evidence import views

app_name = "evidence"
urlpatterns = [
    path("exports/", views.exports_page, name="exports"),
]
