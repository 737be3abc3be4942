from django.apps import AppConfig


class ScriptingConfig(AppConfig):
    name = "scripting"
    label = "scripting"

    def ready(self):
        from scripting import kind  # noqa: F401  (registers the "script" job kind)
