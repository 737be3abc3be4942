from django.apps import AppConfig


class OutboxConfig(AppConfig):
    name = "rmm.outbox"
    label = "outbox"
    verbose_name = "Outbound events"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from rmm.outbox import services

        services.register(services.PING, "A test event, sent to one webhook when it is pinged")
