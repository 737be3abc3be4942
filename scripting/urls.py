from django.urls import path

from scripting import console, views

app_name = "scripting"
urlpatterns = [
    path("run/", views.run_script, name="run"),
    path("", console.script_library, name="library"),
    path("new/", console.script_editor, name="editor"),
    path("<uuid:script_id>/", console.script_version, name="version"),
]
