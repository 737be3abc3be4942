from django.apps import AppConfig


class DeploymentConfig(AppConfig):
    name = "deployment"
    label = "deployment"
    verbose_name = "Software deployment"

    def ready(self):
        from deployment import artefact, kind, services  # kind registers the "deployment" job kind
        from evidence import types
        from rmm.artefacts import registry as artefacts
        from rmm.console import panels

        artefacts.register(artefact.SOFTWARE_PACKAGE)
        types.register(kind.DEPLOYMENT_RESULT, "What a deployment's install and detection steps came to")
        panels.register_asset_panel(
            panels.AssetPanel("Installed software", "deployment/asset_panel.html", services.installed_on)
        )
