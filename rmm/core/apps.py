from django.apps import AppConfig
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class CoreConfig(AppConfig):
    """The helpers every app shares (an app for its static files and its first-start work)."""

    name = "rmm.core"
    label = "core"

    def ready(self) -> None:
        # The settings only read the secret key (importing them writes nothing): the first process
        # to start without RMM_SECRET_KEY or the file generates it, before it serves anything.
        try:
            settings.SECRET_KEY  # noqa: B018 - empty raises
        except ImproperlyConfigured:
            from rmm.core.private_files import create_secret_key

            settings.SECRET_KEY = create_secret_key(settings.VAR_DIR)
