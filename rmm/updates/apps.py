from django.apps import AppConfig


class UpdatesConfig(AppConfig):
    """The agent's signed self-update, as the engine's ``agent_update`` job kind."""

    name = "rmm.updates"
    label = "updates"

    def ready(self) -> None:
        from evidence import types
        from rmm.updates import kind  # registers the "agent_update" job kind

        types.register(kind.UPDATE_RESULT, "What an agent's self-update to a signed release came to")
