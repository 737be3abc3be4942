from django.apps import AppConfig


class InventoryConfig(AppConfig):
    name = "rmm.inventory"
    label = "inventory"

    def ready(self) -> None:
        from rmm.outbox import services as outbox

        outbox.register("agent.offline", "An agent has not been seen for RMM_AGENT_OFFLINE_SECONDS")
        outbox.register("agent.online", "An agent that was offline has been seen again")
