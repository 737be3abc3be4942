from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from rmm.core.errors import ServiceError
from rmm.engine.models import KillSwitch
from rmm.engine.services import kill_switches


class Command(BaseCommand):
    help = "Engage or release a kill switch (global, site or asset), acting as USER; prints the switch id."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="verb", required=True)
        engage = sub.add_parser("engage")
        engage.add_argument("--scope", choices=["global", "site", "asset"], required=True)
        engage.add_argument("--target", help="the site's name or the asset's id (none for global)")
        engage.add_argument("--reason", required=True)
        engage.add_argument("--as", dest="username", required=True, help="the user who engages it")
        release = sub.add_parser("release")
        release.add_argument("id")
        release.add_argument("--reason", required=True)
        release.add_argument("--as", dest="username", required=True, help="an approver")
        sub.add_parser("list")

    def handle(self, *args, verb, **options):
        if verb == "list":
            for switch in KillSwitch.objects.filter(released_at__isnull=True).select_related("site", "asset"):
                self.stdout.write(f"{switch.pk}\t{switch.target_label}\t{switch.reason}")
            return
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"No user {options['username']!r}.")
        try:
            if verb == "engage":
                switch = kill_switches.engage(
                    user, scope=options["scope"], target=options.get("target"), reason=options["reason"]
                )
            else:
                switch = KillSwitch.objects.filter(pk=options["id"]).first()
                if switch is None:
                    raise CommandError("No such kill switch.")
                switch = kill_switches.release(user, switch, options["reason"])
        except ServiceError as exc:
            raise CommandError(exc.detail) from exc
        self.stdout.write(str(switch.pk))
