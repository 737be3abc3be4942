from django.apps import AppConfig


class EvidenceConfig(AppConfig):
    name = "evidence"
    label = "evidence"

    def ready(self) -> None:
        from evidence import services, types
        from rmm.console import panels
        from rmm.engine import registry
        from rmm.updates.kind import UPDATE_RESULT

        types.register(types.HISTORY_ANCHOR, "A signed anchor of the history's head", exportable=False)
        # the core's own kind (agent updates) cannot name this app: its type is registered here
        types.register(UPDATE_RESULT, "What an agent's self-update to a signed release came to")
        # every finished instruction's evidence (one, or many at once); a job's evidence in the
        # PSA's job events
        registry.register_evidence_writer(services.record, services.record_many, services.of_job)
        panels.register_asset_panel(
            panels.AssetPanel("Evidence", "evidence/asset_panel.html", services.newest_of_asset)
        )
