from django.apps import AppConfig


class EvidenceConfig(AppConfig):
    name = "evidence"
    label = "evidence"

    def ready(self) -> None:
        from evidence import services, types
        from rmm.console import panels
        from rmm.engine import registry

        types.register(types.HISTORY_ANCHOR, "A signed anchor of the history's head", exportable=False)
        # every finished instruction's evidence (one, or many at once); a job's evidence in the
        # PSA's job events
        registry.register_evidence_writer(services.record, services.record_many, services.of_job)
        panels.register_asset_panel(
            panels.AssetPanel("Evidence", "evidence/asset_panel.html", services.newest_of_asset)
        )
