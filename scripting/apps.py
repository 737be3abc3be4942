from django.apps import AppConfig


class ScriptingConfig(AppConfig):
    name = "scripting"
    label = "scripting"

    def ready(self):
        from evidence import types
        from scripting import kind  # registers the "script" job kind

        types.register(kind.SCRIPT_RESULT, "What a script job ran and what came out")
