from django.apps import AppConfig


class EvidenceConfig(AppConfig):
    name = "evidence"
    label = "evidence"

    def ready(self) -> None:
        from evidence import services, types
        from rmm.engine import registry

        types.register(types.HISTORY_ANCHOR, "A signed anchor of the history's head", exportable=False)
        registry.register_evidence_writer(services.record)  # every finished instruction's evidence
