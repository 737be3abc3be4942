from django.apps import AppConfig


class ProfilesConfig(AppConfig):
    name = "profiles"
    label = "profiles"
    verbose_name = "Configuration profiles"

    def ready(self):
        from profiles import artefact
        from rmm.artefacts import registry as artefacts

        artefacts.register(artefact.CONFIG_KEY)
