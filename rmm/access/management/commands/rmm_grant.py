from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from rmm.access import services
from rmm.inventory.models import Site


class Command(BaseCommand):
    help = "Grant USERNAME access to a site (or take it back with --revoke). --site '*' means every site."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--site", required=True, help="the site's name, or * for every site")
        parser.add_argument("--revoke", action="store_true")

    def handle(self, *args, username, site, revoke, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user {username!r}.")
        row = None
        if site != "*":
            row = Site.objects.filter(name=site).first()
            if row is None:
                raise CommandError(f"No site named {site!r}.")
        change = services.revoke_site if revoke else services.grant_site
        change(user, row, actor="cli:rmm_grant")
        self.stdout.write(f"{'Revoked' if revoke else 'Granted'} {site} for {username}.")
