from django.apps import AppConfig


class ScriptingConfig(AppConfig):
    name = "scripting"
    label = "scripting"

    def ready(self):
        from django.urls import reverse

        from evidence import types
        from rmm.artefacts import registry as artefacts
        from rmm.console import panels
        from scripting import artefact, kind  # kind registers the "script" job kind

        artefacts.register(artefact.SCRIPT_VERSION)
        panels.register_asset_action(
            panels.AssetAction("Run a script here", lambda asset: f"{reverse('scripting:run')}?asset={asset.pk}")
        )
        types.register(kind.SCRIPT_RESULT, "What a script job ran and what came out")
