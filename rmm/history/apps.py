from django.apps import AppConfig


class HistoryConfig(AppConfig):
    name = "rmm.history"
    label = "history"
    verbose_name = "Execution history"
