from django.apps import AppConfig


class ScriptingConfig(AppConfig):
    name = "scripting"
    label = "scripting"

    def ready(self):
        from evidence import types
        from rmm.artefacts import registry as artefacts
        from scripting import artefact, kind  # kind registers the "script" job kind

        artefacts.register(artefact.SCRIPT_VERSION)
        types.register(kind.SCRIPT_RESULT, "What a script job ran and what came out")
