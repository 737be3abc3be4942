from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from rmm.core.errors import ServiceError
from rmm.inventory import services
from rmm.inventory.models import EnrollmentToken


def _when(value) -> str:
    return value.isoformat(timespec="minutes") if value else "-"


class Command(BaseCommand):
    help = (
        "List agent enrollment tokens (all, or a site's) with their expiry, uses and revocation, or "
        "revoke one by its id (or the id's first characters). Issuing is rmm_enrollment_token's."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="verb", required=True)
        listing = sub.add_parser("list", help="tokens, newest first")
        listing.add_argument("--site", help="only this site's")
        listing.add_argument("--usable", action="store_true", help="only tokens that can still enroll an agent")
        revoke = sub.add_parser("revoke", help="revoke a token at once: no agent can enroll with it any more")
        revoke.add_argument("token", help="the token's id, or the start of it (as the list shows)")
        revoke.add_argument("--reason", default="", help="kept in the history")

    def handle(self, *args, verb, **options):
        rows = EnrollmentToken.objects.select_related("site").order_by("-created_at")
        if verb == "list":
            if options["site"]:
                rows = rows.filter(site__name=options["site"])
            self.stdout.write("id                                    site  created  expires  uses  created_by  revoked")
            now = timezone.now()
            for row in rows:
                if options["usable"] and (row.revoked_at or row.expires_at <= now or row.use_count >= row.max_uses):
                    continue
                revoked = f"{_when(row.revoked_at)} by {row.revoked_by}" if row.revoked_at else "-"
                self.stdout.write(
                    f"{row.pk}  {row.site.name}  {_when(row.created_at)}  {_when(row.expires_at)}  "
                    f"{row.use_count}/{row.max_uses}  {row.created_by}  {revoked}"
                )
            return
        given = options["token"].strip().lower()
        matches = (
            [row for row in rows if str(row.pk).startswith(given) or row.pk.hex.startswith(given)] if given else []
        )
        if not matches:
            raise CommandError(f"No enrollment token {options['token']!r}.")
        if len(matches) > 1:
            raise CommandError(f"{options['token']!r} names {len(matches)} tokens; give more of the id.")
        [row] = matches
        try:
            services.revoke_enrollment_token(row, by="cli:rmm_enrollment_tokens", reason=options["reason"])
        except ServiceError as exc:
            raise CommandError(exc.detail) from exc
        self.stdout.write(f"Revoked enrollment token {row.pk} ({row.site.name}, {row.use_count}/{row.max_uses} used).")
