from django.apps import AppConfig


class EngineConfig(AppConfig):
    name = "rmm.engine"
    label = "engine"
