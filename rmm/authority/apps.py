from django.apps import AppConfig


class AuthorityConfig(AppConfig):
    name = "rmm.authority"
    label = "authority"

    def ready(self) -> None:
        from rmm.authority import tasks
        from rmm.outbox import services as outbox

        outbox.register("job.finished", "A job reached a final status", tasks.job_finished)
        outbox.register("job.late_result", "A result arrived after its job had ended", tasks.job_late_result)
