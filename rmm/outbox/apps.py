from django.apps import AppConfig


class OutboxConfig(AppConfig):
    name = "rmm.outbox"
    label = "outbox"
    verbose_name = "Outbound events"
    default_auto_field = "django.db.models.BigAutoField"
