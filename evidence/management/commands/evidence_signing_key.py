from django.core.management.base import BaseCommand

from rmm.keys import keyset


class Command(BaseCommand):
    help = (
        "Print the fingerprint of the server key that signs anchors and evidence bundles now (give it to auditors); "
        "with --all, every evidence key, oldest first, with its key id."
    )

    def add_arguments(self, parser):
        parser.add_argument("--all", action="store_true", help="every evidence key, the retired ones too")

    def handle(self, *args, **options):
        keys = keyset.current()
        if not options["all"]:
            self.stdout.write(keys.signer(keyset.EVIDENCE).fingerprint)
            return
        for key in keys.keys(keyset.EVIDENCE):
            state = "retired" if key.retired_at else "active"
            self.stdout.write(f"{key.fingerprint}  key id {key.key_id}  {state}  created {key.created_at.isoformat()}")
