from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    name = "rmm.console"
    label = "console"
