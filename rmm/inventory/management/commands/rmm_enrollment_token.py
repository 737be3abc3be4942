from django.core.management.base import BaseCommand

from rmm.inventory import services


class Command(BaseCommand):
    help = "Print a new agent enrollment token for a site (and nothing else), creating the site if needed."

    def add_arguments(self, parser):
        parser.add_argument("--site", required=True)
        parser.add_argument("--hours", type=int, default=None, help="validity (default RMM_ENROLLMENT_TOKEN_TTL_HOURS)")
        parser.add_argument("--uses", type=int, default=None, help="how many agents may use it")

    def handle(self, *args, site, hours, uses, **options):
        actor = "cli:rmm_enrollment_token"
        row = services.get_or_create_site(site, actor=actor)
        _token, secret = services.create_enrollment_token(row, actor=actor, ttl_hours=hours, max_uses=uses)
        self.stdout.write(secret)
