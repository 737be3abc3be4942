from django.apps import AppConfig


class EngineConfig(AppConfig):
    name = "rmm.engine"
    label = "engine"

    def ready(self) -> None:
        from rmm.engine.services import batches, kill_switches
        from rmm.outbox import services as outbox

        kill_switches.register_hook(batches.stop_in_scope)  # no batch releases more rings
        outbox.register("kill_switch.engaged", "A kill switch was engaged: work in its scope stops")
        outbox.register("kill_switch.released", "A kill switch was released")
        outbox.register("batch.halted", "A batch passed its failure threshold: no more rings are released")
        outbox.register("case.may_close", "Every job under a PSA case has reached a final status")
