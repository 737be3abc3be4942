from django.apps import AppConfig


class KeysConfig(AppConfig):
    name = "rmm.keys"
    label = "keys"
    verbose_name = "Signing keys"

    def ready(self) -> None:
        # Refuse to start with a private key that others can read, or one that does not parse:
        # a clear ImproperlyConfigured now rather than a failed signature later.
        from rmm.keys import store

        store.private_keys(strict=True)
