from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from rmm.access import roles as access
from rmm.access import services
from rmm.core.errors import ServiceError
from rmm.inventory.models import Site


class Command(BaseCommand):
    help = (
        "Print a new API token for USERNAME (and nothing else), creating the user in ROLE if needed. "
        "Name the sites to grant with --site (repeatable), or ask for every site with --all-sites."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=access.ROLES)
        parser.add_argument("--site", action="append", default=[], help="grant this site (repeatable)")
        parser.add_argument("--all-sites", action="store_true", help="grant every site, present and future")
        parser.add_argument("--name", default="", help="a label for the token")
        parser.add_argument(
            "--hours",
            type=float,
            default=None,
            help="expire after N hours (default: RMM_PRIVILEGED_TOKEN_HOURS for approvers and admins, "
            "else RMM_TOKEN_HOURS; 0 means never, which approvers and admins cannot have)",
        )

    def handle(self, *args, username, role, site, all_sites, name, hours, **options):
        if not site and not all_sites:
            raise CommandError("Say where the user may act: --site NAME or --all-sites (--site is repeatable).")
        if site and all_sites:
            raise CommandError("Give --site NAME or --all-sites, not both.")
        sites = []
        for site_name in site:
            row = Site.objects.filter(name=site_name).first()
            if row is None:
                raise CommandError(f"No site named {site_name!r}.")
            sites.append(row)
        actor = "cli:rmm_token"
        try:
            with transaction.atomic():
                user = services.ensure_user_with_role(username, role, actor=actor)
                for row in sites or [None]:  # None: the every-site grant
                    services.grant_site(user, row, actor=actor)
                token = services.issue_token(user, name=name or f"cli {role}", actor=actor, hours=hours)
        except ServiceError as exc:
            raise CommandError(exc.detail) from exc
        self.stdout.write(token)
