"""Remove a person's TOTP devices (a lost or replaced phone); their next sign-in sets up a new one."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from rmm.signin import services


class Command(BaseCommand):
    help = "Remove USERNAME's second-factor (TOTP) devices; the next sign-in asks to set up a new one."

    def add_arguments(self, parser):
        parser.add_argument("username")

    def handle(self, *args, username, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user {username!r}.")
        removed = services.reset_devices(user, actor="cli:rmm_otp_reset")
        self.stdout.write(f"Removed {removed} device(s) of {username}; the next sign-in sets up a new one.")
