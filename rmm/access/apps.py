from django.apps import AppConfig


class AccessConfig(AppConfig):
    """Access control: roles, site grants and API tokens (who may do what, where)."""

    name = "rmm.access"
    label = "access"
    verbose_name = "Access control"

    def ready(self) -> None:
        from rmm.access import changes

        changes.connect()
