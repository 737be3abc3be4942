from django.core.management.base import BaseCommand

from rmm.history import anchors


class Command(BaseCommand):
    help = "Print the fingerprint of the server key that signs anchors and evidence bundles (give it to auditors)."

    def handle(self, *args, **options):
        self.stdout.write(anchors.key_fingerprint(anchors.server_public_key()))
