from django.apps import AppConfig


class EvidenceConfig(AppConfig):
    name = "evidence"
    label = "evidence"

    def ready(self) -> None:
        from evidence import types

        types.register(types.HISTORY_ANCHOR, "A signed anchor of the history's head", exportable=False)
