from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from profiles import services
from rmm.core.errors import ServiceError


class Command(BaseCommand):
    help = (
        "Load the built-in config key definitions (profiles/keys/) as script versions and key versions "
        "authored by USER, pending approval by a second person. A second run makes nothing new; a "
        "changed file makes new versions."
    )

    def add_arguments(self, parser):
        parser.add_argument("--author", required=True, help="the user who authors them (a technician or admin)")

    def handle(self, *args, author, **options):
        user = get_user_model().objects.filter(username=author).first()
        if user is None:
            raise CommandError(f"No user named {author!r}.")
        try:
            made = services.load_builtin_keys(user)
        except ServiceError as exc:
            raise CommandError(exc.detail) from exc
        self.stdout.write(
            f"{made['keys']} new key version(s), {made['scripts']} new script version(s), pending approval."
        )
