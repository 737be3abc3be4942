from django.apps import AppConfig


class CoreConfig(AppConfig):
    """The helpers every app shares; an app only for its static files (the API docs' style)."""

    name = "rmm.core"
    label = "core"
