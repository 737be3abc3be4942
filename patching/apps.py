from django.apps import AppConfig


class PatchingConfig(AppConfig):
    name = "patching"
    label = "patching"
    verbose_name = "Patching"
