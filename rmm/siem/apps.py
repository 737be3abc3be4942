from django.apps import AppConfig


class SiemConfig(AppConfig):
    name = "rmm.siem"
    label = "siem"
    verbose_name = "SIEM feed"
    default_auto_field = "django.db.models.BigAutoField"
