import contextlib
import uuid

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q

from rmm.access import services
from rmm.access.models import ApiToken
from rmm.core.errors import ServiceError


def _when(value) -> str:
    return value.isoformat(timespec="minutes") if value else "-"


class Command(BaseCommand):
    help = (
        "List API tokens (all, or USERNAME's) with their expiry and last use, or revoke one by its "
        "prefix (the part after rmm_) or id. Issuing is rmm_token's."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="verb", required=True)
        listing = sub.add_parser("list", help="tokens, newest first")
        listing.add_argument("username", nargs="?")
        revoke = sub.add_parser("revoke", help="revoke a token at once: its next call answers 401")
        revoke.add_argument("token", help="the token's prefix or id")
        revoke.add_argument("--reason", default="", help="kept in the history")

    def handle(self, *args, verb, **options):
        if verb == "list":
            rows = ApiToken.objects.select_related("user").order_by("-created_at")
            if options["username"]:
                rows = rows.filter(user__username=options["username"])
            self.stdout.write("prefix        user  privileged  created  expires  last_used  revoked  name")
            for row in rows:
                self.stdout.write(
                    f"{row.prefix}  {row.user.get_username()}  {'yes' if row.privileged else 'no'}  "
                    f"{_when(row.created_at)}  {_when(row.expires_at)}  {_when(row.last_used_at)}  "
                    f"{_when(row.revoked_at)}  {row.name}"
                )
            return
        found = Q(prefix=options["token"])
        with contextlib.suppress(ValueError):
            found |= Q(pk=uuid.UUID(options["token"]))
        row = ApiToken.objects.filter(found).first()
        if row is None:
            raise CommandError(f"No token {options['token']!r}.")
        try:
            services.revoke_token_on_server(row.pk, reason=options["reason"], actor="cli:rmm_tokens")
        except ServiceError as exc:
            raise CommandError(exc.detail) from exc
        self.stdout.write(f"Revoked {row.prefix} ({row.user.get_username()}).")
