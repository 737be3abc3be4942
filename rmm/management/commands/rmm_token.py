from django.core.management.base import BaseCommand, CommandError

from rmm import access
from rmm.authority import services
from rmm.errors import ServiceError
from rmm.inventory.models import Site


class Command(BaseCommand):
    help = (
        "Print a new API token for USERNAME (and nothing else), creating the user in ROLE if needed. "
        "Without --site the user is granted every site; with --site, only those named."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=access.ROLES)
        parser.add_argument("--site", action="append", default=[], help="grant this site (repeatable)")
        parser.add_argument("--name", default="", help="a label for the token")

    def handle(self, *args, username, role, site, name, **options):
        actor = "cli:rmm_token"
        try:
            user = services.ensure_user_with_role(username, role, actor=actor)
            if site:
                for site_name in site:
                    row = Site.objects.filter(name=site_name).first()
                    if row is None:
                        raise CommandError(f"No site named {site_name!r}.")
                    services.grant_site(user, row, actor=actor)
            else:
                services.grant_site(user, None, actor=actor)
            token = services.issue_token(user, name=name or f"cli {role}", actor=actor)
        except ServiceError as exc:
            raise CommandError(exc.detail) from exc
        self.stdout.write(token)
