from django.apps import AppConfig


class UpdatesConfig(AppConfig):
    """The agent's signed self-update, as the engine's ``agent_update`` job kind."""

    name = "rmm.updates"
    label = "updates"

    def ready(self) -> None:
        from rmm.updates import kind  # noqa: F401 (registers the "agent_update" job kind; evidence/apps.py its type)
