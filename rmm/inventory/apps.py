from django.apps import AppConfig


class InventoryConfig(AppConfig):
    name = "rmm.inventory"
    label = "inventory"

    def ready(self) -> None:
        from rmm.inventory import namespaces
        from rmm.outbox import services as outbox

        namespaces.register_builtins()

        outbox.register("agent.offline", "An agent has not been seen for RMM_AGENT_OFFLINE_SECONDS")
        outbox.register("agent.online", "An agent that was offline has been seen again")
