from django.apps import AppConfig


class HistoryConfig(AppConfig):
    name = "rmm.history"
    label = "history"
    verbose_name = "Execution history"

    def ready(self):
        from rmm import access_changes

        access_changes.connect()
