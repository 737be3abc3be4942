from django.urls import path

from rmm.signin import views

app_name = "signin"
urlpatterns = [
    path("setup/", views.setup, name="setup"),
    path("verify/", views.verify, name="verify"),
]
