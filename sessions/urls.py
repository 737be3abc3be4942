from django.urls import path

from sessions import views

urlpatterns = [
    path("", views.session_list, name="remote-sessions"),
    path("<uuid:session_id>/", views.session_page, name="remote-session"),
    path("<uuid:session_id>/end/", views.session_end, name="remote-session-end"),
    path("<uuid:session_id>/recording.cast", views.session_recording, name="remote-session-recording"),
]
