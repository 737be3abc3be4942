from django.core.management.base import BaseCommand, CommandError

from evidence import anchors
from rmm.core.errors import ServiceError


class Command(BaseCommand):
    help = "Sign the head of the execution history now and keep it as a history_anchor evidence record."

    def handle(self, *args, **options):
        try:
            row = anchors.anchor_history("cli:anchor_history")
        except ServiceError as exc:  # no evidence key can sign here
            raise CommandError(exc.detail) from None
        if row is None:
            self.stdout.write("Nothing to anchor: the history is empty.")
            return
        self.stdout.write(
            f"Anchored event {row.related_id.int} in {row.storage_uri}; "
            f"key {anchors.key_fingerprint(anchors.server_public_key())}"
        )
