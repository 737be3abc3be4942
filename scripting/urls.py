from django.urls import path

from scripting import views

app_name = "scripting"
urlpatterns = [path("run/", views.run_script, name="run")]
