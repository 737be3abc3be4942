from django.apps import AppConfig


class ArtefactsConfig(AppConfig):
    name = "rmm.artefacts"
    label = "artefacts"
    verbose_name = "Approved artefacts"
