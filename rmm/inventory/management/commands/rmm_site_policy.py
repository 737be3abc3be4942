from django.core.management.base import BaseCommand, CommandError

from rmm.inventory import services
from rmm.inventory.models import Site


class Command(BaseCommand):
    help = (
        "Show or set a site's policy. --allow-self-authorized-jobs lets jobs requested on PSA authority "
        "the requester wrote itself run at once; --deny-self-authorized-jobs (the default) makes them wait "
        "for an approver."
    )

    def add_arguments(self, parser):
        parser.add_argument("site", help="the site's name")
        choice = parser.add_mutually_exclusive_group()
        choice.add_argument("--allow-self-authorized-jobs", dest="allow", action="store_const", const=True)
        choice.add_argument("--deny-self-authorized-jobs", dest="allow", action="store_const", const=False)

    def handle(self, *args, site, allow, **options):
        row = Site.objects.filter(name=site).first()
        if row is None:
            raise CommandError(f"No site named {site!r}.")
        if allow is not None:
            row = services.set_site_policy("cli:rmm_site_policy", row, allow_self_authorized_jobs=allow)
        self.stdout.write(f"{row.name}: allow_self_authorized_jobs={'on' if row.allow_self_authorized_jobs else 'off'}")
