from django.apps import AppConfig


class ContainmentConfig(AppConfig):
    name = "containment"
    label = "containment"
    verbose_name = "EDR containment"

    def ready(self):
        from containment import kind, services  # kind registers the "containment" job kind
        from evidence import types
        from rmm.console import panels
        from rmm.outbox import services as outbox

        types.register(kind.CONTAINMENT_STATE, "What a containment job's change and state read came to")
        outbox.register(services.CHANGED, "An endpoint's network containment changed (contained or released)")
        panels.register_asset_panel(
            panels.AssetPanel("Containment", "containment/asset_panel.html", services.asset_panel)
        )
