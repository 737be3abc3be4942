from django.apps import AppConfig


class DeploymentConfig(AppConfig):
    name = "deployment"
    label = "deployment"
    verbose_name = "Software deployment"

    def ready(self):
        from deployment import artefact
        from rmm.artefacts import registry as artefacts

        artefacts.register(artefact.SOFTWARE_PACKAGE)
